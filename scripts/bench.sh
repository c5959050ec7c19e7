#!/usr/bin/env bash
# Benchmarks that print figures (./aegis bench [fleet|harden|harden-vm|bpf|exec|secrets|access|controller|recovery|console]; all by
# default; harden-vm only when named, a QEMU TCG VM makes it slow). Each is a module of
# benchmarks/ and prints through benchmarks.figures.report.
# Targets are read from the output, never asserted by timed tests.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
lab_env=$(.venv/bin/aegis-lab env)
eval "$lab_env"
which=${1:-all}
shift || true
run() { python -m "benchmarks.$1" "${@:2}"; }
want() { [ "$which" = all ] || [ "$which" = "$1" ]; }
if want fleet; then
  echo "=== fleet lifecycle (Terraform + podman nodes + Ansible over SSH)"
  run fleet "$@"
fi
if want harden; then
  echo "=== hardening: converge time, Lynis index and systemd exposure before/after"
  run harden "$@"
fi
if [ "$which" = harden-vm ]; then  # not in all: TCG emulation makes it slow (one run: 40-70 min on two cores)
  echo "=== hardening on a QEMU TCG VM node: Lynis before/after, kernel-global sysctls in force (slow: about 40 min)"
  run harden_vm "$@"
fi
if want bpf; then
  echo "=== eBPF segment filter: ns/packet (100,000 edges vs empty XDP), grant-to-enforce latency"
  run bpf "$@"
fi
if want exec; then
  echo "=== agent exec monitor: exec events/s sustained, events lost, agent CPU and RSS"
  run exec "$@"
fi
if want secrets; then
  echo "=== leased secrets: quarantine accepted -> token, leases, login revoked; agent wipe; rotation -> reload"
  run secrets "$@"
fi
if want access; then
  echo "=== just-in-time access: request accepted -> first packet passes (p50/p99), idle revoke precision (--fleet N: label policy change -> enforced on every node of a lab fleet)"
  run access "$@"
fi
if want recovery; then
  echo "=== recovery: detect -> contained (ms), contained -> replacement trusted (s), 1 and 3 nodes"
  run recovery "$@"
fi
if want console; then
  echo "=== operator console: server-side render time per page, 500 nodes and 100,000 events"
  run console "$@"
fi
if want controller; then
  echo "=== controller: ledger append/verify rates, event intake over mutual TLS"
  run ledger "$@"
  run intake "$@"
  run intake --postgres "$@"
fi
