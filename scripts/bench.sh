#!/usr/bin/env bash
# Benchmarks that print figures (./aegis bench). Targets are read from the output,
# never asserted by timed tests. Extra arguments go to `aegis-lab bench`.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
lab_env=$(.venv/bin/aegis-lab env)
eval "$lab_env"
echo "=== fleet lifecycle (Terraform + podman nodes + Ansible over SSH)"
aegis-lab bench "$@"
