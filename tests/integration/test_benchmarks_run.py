"""The controller, secrets, exec and console benchmarks behind `./aegis bench
controller|secrets|exec|console` still run against the current API (a tiny size: behaviour,
not speed; the figures come from the command)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from harness import REPO

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(("module", "args", "keys"), [
    ("benchmarks.intake", ["--events", "200", "--batch", "50", "--nodes", "2"],
     {"new_events_per_s", "duplicate_events_per_s", "fleet_new_events_per_s"}),
    ("benchmarks.ledger", ["--records", "200", "--batch", "50", "--single", "20", "--threads", "4"],
     {"append_single_per_s", "append_grouped_per_s", "append_batched_per_s", "verify_per_s"}),
    ("benchmarks.access", ["--grants", "2", "--idle-samples", "0"],
     {"grant_to_first_packet_p50_ms", "grant_to_first_packet_p99_ms"}),
    ("benchmarks.secrets", ["--rounds", "1", "--rotations", "1"],
     {"token_revoked_p50_ms", "login_gone_p50_ms", "agent_wipe_p50_ms",
      "rotation_to_reload_p50_s"}),
    ("benchmarks.console", ["--nodes", "20", "--events", "200", "--rounds", "2"],
     {"fleet_server_ms", "node_server_ms", "incidents_server_ms", "recovery_server_ms",
      "access_server_ms", "ledger_server_ms", "ledger_verify_server_ms"}),
])
def test_benchmark_prints_its_figures(module: str, args: list[str], keys: set[str]) -> None:
    out = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                         timeout=300, check=False, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert figures["bench"] == module.removeprefix("benchmarks.")
    assert keys <= set(figures), figures
    assert all(figures[k] > 0 for k in keys), figures
    if module in ("benchmarks.intake", "benchmarks.ledger"):  # issue 16: figure next to target
        assert any(line.split()[:1] == ["verify_per_s" if "ledger" in module else
                                        "new_events_per_s"] and "target >=" in line
                   for line in out.stdout.splitlines()), out.stdout


def test_exec_benchmark_runs_paced_and_flat_out_with_its_policy() -> None:
    """`./aegis bench exec` at a tiny size: both phases, the policy loaded, no event lost
    at the paced rate, and the figures next to their targets."""
    out = subprocess.run([sys.executable, "-m", "benchmarks.exec", "--seconds", "1",
                          "--rate", "200", "--workers", "1"], capture_output=True, text=True,
                         timeout=300, check=False, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert figures["bench"] == "exec" and figures["policy_rules"] >= 5
    for phase in ("paced", "flat"):
        assert figures[f"{phase}_events_per_s"] > 0, figures
        assert figures[f"{phase}_cpu_ms_per_1000_events"] >= 0, figures  # 10 ms ticks
    assert figures["paced_events_lost"] == 0, figures
    assert figures["agent_peak_rss_mb"] > 0
    assert "target <= 3" in out.stdout and "Falco users report 24" in out.stdout


def test_access_benchmark_refuses_a_fleet_round_it_cannot_run() -> None:
    """``--fleet N`` (the policy roll-out on a lab fleet, minutes: not run here) is checked
    before anything starts: one node has no neighbour to probe from."""
    out = subprocess.run([sys.executable, "-m", "benchmarks.access", "--fleet", "1"],
                         capture_output=True, text=True, timeout=120, check=False, cwd=REPO)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "--fleet must be 0 (off) or 2 to 8 nodes" in out.stderr
