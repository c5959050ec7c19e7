"""An interrupted test run still tears down what it made: Ctrl-C (SIGINT to the whole
foreground process group, as a terminal sends it), a second Ctrl-C while the teardown
runs, and SIGTERM (a CI timeout). The run's own leftover check reports what is left
after the teardown, not before it.

The parent tests run a child pytest on this module's ``test_child_*`` test (skipped
unless ``AEGIS_INTERRUPT_CHILD`` is set): a session fixture puts a bridge and a veth
pair up through the lab's network code under the child's run prefix, the test blocks,
and the parent interrupts it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from aegis_lab import network
from aegis_lab.cleanup import leftovers
from aegis_lab.naming import pick_network
from conftest import sub_prefix
from harness import REPO, wait_until

pytestmark = pytest.mark.integration

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


@pytest.mark.skipif(not CHILD, reason="run by test_interrupted_run's parent tests only")
def test_child_blocks_holding_lab_links(held_links: str) -> None:
    print(READY, flush=True)
    time.sleep(300)


# -- the parent -------------------------------------------------------------------------
def _child(prefix: str, mode: str, tmp: Path) -> subprocess.Popen:
    env = {**os.environ, "AEGIS_TEST_PREFIX": prefix, "AEGIS_INTERRUPT_CHILD": mode,
           "AEGIS_INTERRUPT_GO": str(tmp / "go"), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-s", "-q",
         f"{Path(__file__)}::test_child_blocks_holding_lab_links"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)  # its own process group, like a terminal's foreground job


def _read_until(proc: subprocess.Popen, marker: str, seen: list[str],
                timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if marker in line:
            return
    pytest.fail(f"the child never printed {marker}: {''.join(seen)[-3000:]}")


@pytest.mark.parametrize(("signals", "mode"), [
    ((signal.SIGINT,), "plain"),
    ((signal.SIGTERM,), "plain"),
    ((signal.SIGINT, signal.SIGINT), "slow-teardown"),
    ((signal.SIGTERM, signal.SIGTERM), "slow-teardown"),
], ids=["ctrl-c", "sigterm", "ctrl-c-twice", "sigterm-twice"])
def test_an_interrupted_run_removes_its_links(tmp_path: Path, signals: tuple[int, ...],
                                               mode: str) -> None:
    prefix = sub_prefix()
    proc = _child(prefix, mode, tmp_path)
    seen: list[str] = []
    try:
        _read_until(proc, READY, seen)
        assert network.links_with_prefix(prefix), "the child made no links"
        os.killpg(proc.pid, signals[0])
        if len(signals) > 1:  # again, while the teardown is under way
            _read_until(proc, TEARING, seen)
            os.killpg(proc.pid, signals[1])
            time.sleep(0.5)
            (tmp_path / "go").touch()
        out = "".join(seen) + proc.communicate(timeout=120)[0]
        assert proc.returncode != 0, out[-3000:]
        assert TEARING in out, out[-3000:]
        assert leftovers(prefix) == [], out[-3000:]
        # the run's own check ran after the teardown: nothing to report
        assert "left host objects behind" not in out, out[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        network.bridge_down(prefix)
        assert wait_until(lambda: not network.links_with_prefix(prefix), 10)
