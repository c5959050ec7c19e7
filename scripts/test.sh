#!/usr/bin/env bash
# The whole Aegis test suite (./aegis test; .ci/run calls exactly that).
# Static checks first (fast), then pytest: unit, integration (real kernel, Terraform,
# OpenBao, podman) and e2e (real fleets, Molecule). Extra arguments go to pytest.
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
export PATH="$repo/.venv/bin:$PATH"
lab_env=$(aegis-lab env) || { echo "aegis-lab env failed: run ./aegis test (it bootstraps first)" >&2; exit 1; }
eval "$lab_env"
export ANSIBLE_LINT_OFFLINE=1 PYTHONDONTWRITEBYTECODE=1
failed=()
step() { local name=$1; shift; printf "\n=== %s\n" "$name"; "$@" || failed+=("$name"); }

step "ruff" ruff check protocol agent controller plugins tests scripts benchmarks lab
step "terraform fmt" terraform fmt -check -recursive terraform
# ansible-lint installs the collection it lints into $ANSIBLE_HOME/collections: give it a
# throw-away home so it always lints this tree and never writes to ~/.ansible.
lint_home=$(mktemp -d)
step "ansible-lint (production profile, offline)" env ANSIBLE_HOME="$lint_home" ansible-lint --offline --profile production
rm -rf "$lint_home"
step "ansible-test sanity (offline)" scripts/sanity.sh
build_dir=$(mktemp -d)
step "ansible-galaxy collection build" ansible-galaxy collection build --force --output-path "$build_dir" .
rm -rf "$build_dir"

printf '\n=== pytest\n'
pytest -p no:cacheprovider --durations=40 "$@"
rc=$?
if [ ${#failed[@]} -gt 0 ]; then
  printf '\nstatic checks failed: %s\n' "${failed[*]}"
  [ $rc -ne 0 ] || rc=1
fi
exit $rc
