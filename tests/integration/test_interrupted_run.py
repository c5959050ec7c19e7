"""An interrupted test run still tears down what it made: Ctrl-C (SIGINT to the whole
foreground process group, as a terminal sends it), a second Ctrl-C while the teardown
runs, and SIGTERM (a CI timeout). The run's own leftover check reports what is left
after the teardown, not before it.

The parent tests run a child pytest on ``interrupted_child.py`` (not collected by the
suite: its name does not match ``test_*.py``, and pytest collects it only when given
explicitly): a session fixture puts a bridge and a veth
pair up through the lab's network code under the child's run prefix, the test blocks,
and the parent interrupts it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from interrupted_child import READY, TEARING

from aegis_lab import network
from aegis_lab.cleanup import leftovers
from conftest import sub_prefix
from harness import REPO, wait_until

pytestmark = pytest.mark.integration



# -- the parent -------------------------------------------------------------------------
def _child(prefix: str, mode: str, tmp: Path) -> subprocess.Popen:
    env = {**os.environ, "AEGIS_TEST_PREFIX": prefix, "AEGIS_INTERRUPT_CHILD": mode,
           "AEGIS_INTERRUPT_GO": str(tmp / "go"), "PYTHONUNBUFFERED": "1"}
    # SIGINT as a terminal's job gets it, whatever this run inherited: a suite started in
    # the background by a non-interactive shell (`cmd &`) has SIGINT ignored, which a child
    # inherits across exec (a handler is reset to the default there), and Python then never
    # raises KeyboardInterrupt in it
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return _spawn(env)
    finally:
        signal.signal(signal.SIGINT, before)


def _spawn(env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-s", "-q",
         f"{Path(__file__).with_name('interrupted_child.py')}::test_child_blocks_holding_lab_links"],
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
