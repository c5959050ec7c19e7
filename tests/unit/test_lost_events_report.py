"""The agent's controller link reports lost events as their increase since the counts the
controller was last told (kept in the state directory), a reset counter as all new."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aegis_agent.config import ControllerConfig
from aegis_agent.spool import Spool
from aegis_agent.uplink import Uplink

pytestmark = pytest.mark.unit


def test_increase_since_the_counts_last_reported(tmp_path: Path) -> None:
    counts = {"exec": 0, "spool": 0}
    cfg = ControllerConfig(url="https://ctl.example:8443", ca_file=tmp_path / "ca.pem",
                           state_dir=tmp_path / "state")
    (tmp_path / "state").mkdir()
    link = Uplink(cfg, "n1", Spool(tmp_path / "spool"), {}, lost_events=lambda: dict(counts))
    assert link._lost_since_reported() == ({"exec": 0, "spool": 0}, {})
    counts.update(exec=120, spool=3)
    assert link._lost_since_reported() == ({"exec": 120, "spool": 3}, {"exec": 120, "spool": 3})
    link._lost_file.write_text(json.dumps({"exec": 120, "spool": 3}))  # as heartbeat() does
    assert link._lost_since_reported() == (None, {})  # nothing new: nothing to write
    counts.update(exec=150, spool=1)  # spool: a new process, its count began again
    assert link._lost_since_reported() == ({"exec": 150, "spool": 1}, {"exec": 30, "spool": 1})
    link._lost_file.write_text("not json")  # unreadable: everything counts as new
    assert link._lost_since_reported()[1] == {"exec": 150, "spool": 1}
    assert Uplink(cfg, "n1", link.spool, {})._lost_since_reported() == (None, {})
