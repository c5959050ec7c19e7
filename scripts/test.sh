#!/usr/bin/env bash
# The whole Aegis test suite (./aegis test; .ci/run calls exactly that): pytest, with the
# static checks (ruff, terraform fmt, ansible-lint, ansible-test sanity, galaxy build) as
# tests of their own (tests/static) that run in the background lane first, then unit,
# integration (real kernel, Terraform, OpenBao, podman) and e2e (real fleets, Molecule).
# Extra arguments go to pytest (e.g. -m static, -m unit, -k NAME).
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
export PATH="$repo/.venv/bin:$PATH"
lab_env=$(aegis-lab env) || { echo "aegis-lab env failed: run ./aegis test (it bootstraps first)" >&2; exit 1; }
eval "$lab_env"
export ANSIBLE_LINT_OFFLINE=1 PYTHONDONTWRITEBYTECODE=1
exec pytest -p no:cacheprovider --durations=40 "$@"
