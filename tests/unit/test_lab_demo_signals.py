"""A SIGTERM to ``aegis-lab demo`` (a CI timeout, ``kill``) unwinds the story, so its
teardown runs: the fleet, the controller and OpenBao are stopped, not left behind."""

from __future__ import annotations

import os
import signal
import time

import pytest

from aegis_lab.demo import sigterm_unwinds

pytestmark = pytest.mark.unit


def test_sigterm_raises_system_exit_so_finally_blocks_run() -> None:
    before = signal.getsignal(signal.SIGTERM)
    torn_down = []
    with pytest.raises(SystemExit) as stopped, sigterm_unwinds():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler interrupts it at once
        finally:
            torn_down.append(True)
    assert stopped.value.code == 128 + signal.SIGTERM
    assert torn_down == [True]
    assert signal.getsignal(signal.SIGTERM) is before
