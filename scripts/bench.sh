#!/usr/bin/env bash
# Benchmarks that print figures (./aegis bench [fleet|harden|bpf|exec|controller]; all by default).
# Targets are read from the output, never asserted by timed tests.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
lab_env=$(.venv/bin/aegis-lab env)
eval "$lab_env"
which=${1:-all}
if [ "$which" = all ] || [ "$which" = fleet ]; then
  echo "=== fleet lifecycle (Terraform + podman nodes + Ansible over SSH)"
  aegis-lab bench fleet
fi
if [ "$which" = all ] || [ "$which" = harden ]; then
  echo "=== hardening: converge time, Lynis index and systemd exposure before/after"
  aegis-lab bench harden
fi
if [ "$which" = all ] || [ "$which" = bpf ]; then
  echo "=== eBPF segment filter: ns/packet (100,000 edges vs empty XDP), grant-to-enforce latency"
  python -m aegis_agent.bpf.bench
fi
if [ "$which" = all ] || [ "$which" = exec ]; then
  echo "=== agent exec monitor: exec events/s sustained, events lost, agent CPU and RSS"
  python -m aegis_agent.bench_exec
fi
if [ "$which" = all ] || [ "$which" = controller ]; then
  echo "=== controller: ledger append/verify rates, event intake over mutual TLS"
  python -m aegis_controller.bench_ledger
  python -m aegis_controller.bench_intake
fi
