"""The child run of test_interrupted_run: a session fixture puts a bridge and a veth pair
up through the lab's network code under the run prefix, the test blocks, and the parent
interrupts it. Not collected by the suite (its name does not match ``test_*.py``)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from aegis_lab import network
from aegis_lab.naming import pick_network

CHILD = os.environ.get("AEGIS_INTERRUPT_CHILD", "")
READY, TEARING = "AEGIS-CHILD-READY", "AEGIS-CHILD-TEARING-DOWN"


# -- the child run ----------------------------------------------------------------------
@pytest.fixture(scope="session")
def held_links(run_prefix: str) -> Iterator[str]:
    try:
        network.bridge_up(run_prefix, pick_network(run_prefix))
        with IPRoute() as ipr:
            ipr.link("add", ifname=network.host_veth_name(run_prefix, 0), kind="veth",
                     peer={"ifname": network.host_veth_name(run_prefix, 1)})
        yield run_prefix
    finally:
        print(TEARING, flush=True)
        if CHILD == "slow-teardown":  # a teardown that takes a while, as a fleet's does
            go = Path(os.environ["AEGIS_INTERRUPT_GO"])
            deadline = time.monotonic() + 30
            while not go.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        network.bridge_down(run_prefix)


def test_child_blocks_holding_lab_links(held_links: str) -> None:
    print(READY, flush=True)
    time.sleep(300)
