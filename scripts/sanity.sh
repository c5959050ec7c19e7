#!/usr/bin/env bash
# ansible-test sanity for the aegis.fleet collection, offline.
#
# - ansible-test needs the collection at .../ansible_collections/aegis/fleet and refuses
#   symlinked trees, so the collection's files are copied into a temporary tree.
# - ansible-test's HOME is project-local (.state/ansible-test-home): its sanity
#   virtualenvs (pylint, yamllint, voluptuous...) and caches never land in ~/.ansible.
# - "offline": ansible-test downloads get-pip.py from ci-files.testing.ansible.com for
#   every fresh virtualenv (and --venv makes one each run). scripts/get_pip_standin.py
#   takes its place in ansible-test's cache and installs pip from Python's bundled wheel
#   plus a local wheelhouse. Only the very first run on a machine needs PyPI, to fill the
#   wheelhouse and build the sanity virtualenvs; every later run needs no network at all
#   (checked with `unshare --net scripts/sanity.sh`).
#
# Tests: all 24 of ansible-test's sanity tests run; none is skipped. On Python 3.11 only
# (--python 3.11), the project's one Python and the nodes' (Debian 12): no other
# interpreter is installed here for the compile/import tests of other versions.
# pslint, shellcheck and empty-init find no files of theirs in the collection.
#
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
# build_ignore leaves out of the collection; tests/sanity (ignore files) is kept.
git ls-files -co --exclude-standard \
  | grep -vE '^(tests/|agent/|controller/|protocol/|lab/|benchmarks/|terraform/|bpf/|molecule/|scripts/|\.ci/|aegis$|requirements\.txt$|pyproject\.toml$)' \
  | cat - <(git ls-files -co --exclude-standard tests/sanity) \
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
HOME="$home" ansible-test sanity --venv --python 3.11 --color no "$@"
