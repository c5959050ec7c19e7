#!/usr/bin/env bash
# ansible-test sanity for the aegis.fleet collection, offline from Galaxy and from
# ansible-test's own download host. The collection is copied into a temporary
# ansible_collections/aegis/fleet tree (ansible-test needs that layout); ansible-test's
# HOME is project-local (.state/ansible-test-home) so its virtualenvs and caches never
# land in the operator's ~/.ansible; its pip bootstrap is scripts/get_pip_standin.py.
# Extra arguments go to ansible-test sanity (e.g. --test validate-modules).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
export PATH="$repo/.venv/bin:$PATH"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
dest="$work/ansible_collections/aegis/fleet"
mkdir -p "$dest"
# The collection's files as git sees them (tracked and new), without what galaxy.yml's
# build_ignore leaves out of the collection.
git ls-files -co --exclude-standard \
  | grep -vE '^(tests/|agent/|controller/|terraform/|bpf/|molecule/|scripts/|\.ci/|aegis$|requirements\.txt$|pyproject\.toml$)' \
  | while read -r f; do [ -e "$f" ] && printf '%s\n' "$f"; done \
  | tar -cf - -T - | tar -xf - -C "$dest"

home="$repo/.state/ansible-test-home"
pip_version=$(python - <<'PY'
from ansible_test._internal.python_requirements import get_venv_packages
from ansible_test._internal.host_configs import NativePythonConfig
print(get_venv_packages(NativePythonConfig(version="3.11", path="/usr/bin/python3"))["pip"])
PY
)
mkdir -p "$home/.ansible/test/cache"
cp scripts/get_pip_standin.py "$home/.ansible/test/cache/get_pip_${pip_version//./_}.py"

cd "$dest"
# Sanity tests that need the network or another Python than 3.11 are not run:
#   none are skipped by name; only --python 3.11 is tested (the project's one Python).
HOME="$home" ansible-test sanity --venv --python 3.11 --color no "$@"
