"""Fleets made at once from several processes (the test run's two lanes) never get the
same /24: ``pick_network`` claims what it picks under a host-wide lock until the bridge
routes it. Two prefixes with the same byte sum start at the same octet, the worst case."""

from __future__ import annotations

import subprocess
import sys

import pytest

from aegis_lab import naming

pytestmark = pytest.mark.unit

PICK = ("import sys; from aegis_lab.naming import pick_network; "
        "print(pick_network(sys.argv[1]).cidr)")


def test_fleets_picked_at_once_get_different_networks() -> None:
    prefixes = ["zq9ab1", "zq9ba1", "zq9a1b", "zq91ab"]  # one byte sum: one starting octet
    assert len({sum(p.encode()) for p in prefixes}) == 1
    procs = [subprocess.Popen([sys.executable, "-c", PICK, p], stdout=subprocess.PIPE,
                              text=True) for p in prefixes]
    nets = [proc.communicate(timeout=60)[0].strip() for proc in procs]
    try:
        assert all(nets) and len(set(nets)) == len(nets), nets
        # a fleet picking again (a restart before its bridge) gets its own claim back
        assert naming.pick_network(prefixes[0]).cidr == nets[0]
    finally:
        for net in nets:
            (naming.NETWORK_CLAIMS / net.split(".")[2]).unlink(missing_ok=True)
