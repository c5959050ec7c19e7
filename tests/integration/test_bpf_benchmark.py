"""`./aegis bench bpf` keeps running: ``python -m benchmarks.bpf`` at a tiny size prints
its figures through benchmarks.figures (behaviour, not speed)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from harness import REPO

pytestmark = pytest.mark.integration


def test_bpf_benchmark_prints_its_figures() -> None:
    out = subprocess.run([sys.executable, "-m", "benchmarks.bpf", "--edges", "200",
                          "--repeat", "100", "--samples", "5", "--policy-sources", "50"],
                         cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert figures["bench"] == "bpf_segment" and figures["edges"] == 200
    keys = {"empty_xdp_ns", "allow_established_ns", "allow_new_flow_ns", "miss_ns",
            "miss_all_shapes_ns", "grant_to_enforce_us_p50", "grant_to_enforce_us_p99",
            "policy_allow_ns", "policy_pair_drop_ns", "policy_miss_ns", "policy_install_s"}
    assert keys <= set(figures), figures
    assert all(figures[k] > 0 for k in keys - {"empty_xdp_ns", "policy_install_s"}), figures
    # both targets are printed next to the empty program, as differences from it
    for name in ("allow_established", "miss"):
        assert figures[f"{name}_over_empty_ns"] == figures[f"{name}_ns"] - figures[
            "empty_xdp_ns"]
        assert f"{name}_over_empty_ns" in out.stdout and "empty XDP program" in out.stdout
