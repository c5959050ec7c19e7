"""``aegis-lab controller down`` signals only the fleet's own controller: a state file
whose PID now belongs to another process (the controller died, the PID was reused) is
reported as stale and removed, and that process is left alone."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from aegis_lab import controller as lab_controller
from aegis_lab.controller import controller_dir
from aegis_lab.fleet import LocalFleet
from aegis_lab.paths import Paths
from conftest import sub_prefix
from harness import REPO

pytestmark = pytest.mark.unit


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen]:
    """An unrelated live process, as a reused PID would be."""
    proc = subprocess.Popen(["sleep", "300"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _lab(state: Path, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aegis_lab.cli", "--repo", str(REPO),
                           "--state-dir", str(state), *argv],
                          capture_output=True, text=True, timeout=60, check=False)


# what an earlier run wrote (pid only), and what this lab writes (with the process's
# start time and command line) for a controller that has since gone
STALE = {
    "pid only": {},
    "other process": {"starttime": 1, "cmdline": ["aegis-controller", "serve"]},
}


@pytest.mark.parametrize("extra", list(STALE.values()), ids=list(STALE))
def test_down_with_a_stale_state_file_does_not_signal_the_pids_new_owner(
        tmp_path: Path, bystander: subprocess.Popen, extra: dict) -> None:
    prefix = sub_prefix()
    fleet = LocalFleet(prefix, Paths.discover(REPO, tmp_path))
    info = controller_dir(fleet) / "controller.json"
    info.parent.mkdir(parents=True)
    info.write_text(json.dumps({"url": "https://10.213.9.1:4443", "pid": bystander.pid,
                                "state_dir": str(info.parent), **extra}))

    shown = _lab(tmp_path, "controller", "show", "--prefix", prefix)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["running"] is False

    down = _lab(tmp_path, "controller", "down", "--prefix", prefix)
    assert down.returncode == 0, down.stderr
    assert bystander.poll() is None, "controller down signalled an unrelated process"
    assert "stale" in down.stderr and str(bystander.pid) in down.stderr, down.stderr
    assert not info.exists()


@pytest.mark.parametrize("recorded", ["as launched", "pid only"])
def test_down_still_stops_the_fleets_own_controller(tmp_path: Path, recorded: str) -> None:
    """The check does not lock out the real thing: the controller started for the fleet
    (on loopback here; the lab puts it on the bridge) is recognised and stopped, also
    from a state file of an earlier lab that recorded only its PID."""
    prefix = sub_prefix()
    fleet = LocalFleet(prefix, Paths.discover(REPO, tmp_path))
    started = lab_controller.start(fleet, "127.0.0.1")
    info = controller_dir(fleet) / "controller.json"
    try:
        assert lab_controller.show(fleet)["running"] is True, (
            started, lab_controller._identity(started["pid"]))
        if recorded == "pid only":
            info.write_text(json.dumps({"pid": started["pid"], "url": started["url"]}))
            assert lab_controller.show(fleet)["running"] is True
        assert lab_controller.down(fleet) == "stopped"
        # it is this test's child: exited and waiting to be reaped
        assert os.waitpid(started["pid"], os.WNOHANG)[0] == started["pid"]
        assert not info.exists()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(started["pid"], signal.SIGKILL)
