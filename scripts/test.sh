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

step "ruff" ruff check agent controller plugins tests
step "terraform fmt" terraform fmt -check -recursive terraform
step "ansible-lint (production profile, offline)" ansible-lint --offline --profile production
build_dir=$(mktemp -d)
step "ansible-galaxy collection build" ansible-galaxy collection build --force --output-path "$build_dir" .
rm -rf "$build_dir"

printf '\n=== pytest\n'
pytest -p no:cacheprovider "$@"
rc=$?
if [ ${#failed[@]} -gt 0 ]; then
  printf '\nstatic checks failed: %s\n' "${failed[*]}"
  [ $rc -ne 0 ] || rc=1
fi
exit $rc
