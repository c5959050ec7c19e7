"""The console's guard-rail status counts the breaker the way the recovery engine does:
distinct nodes quarantined within the window (recovery.guard), not jobs — a node
quarantined again after a failed job is one node, so two nodes do not trip a breaker of
threshold 2 however many jobs they have."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness_domain import enroll_trusted, make_controller, quarantine

from aegis_controller import db
from aegis_controller.console.recovery import jobs
from aegis_controller.recovery.guard import GuardRails
from aegis_controller.recovery.states import JobState

pytestmark = pytest.mark.unit


def test_the_breaker_counts_distinct_nodes_like_the_engine(tmp_path: Path) -> None:
    ctl = make_controller(tmp_path / "c")
    for node_id in ("n1", "n2"):
        enroll_trusted(ctl, node_id)
        quarantine(ctl, node_id)
    first = ctl.recovery.create("n1", actor="test")
    ctl.recovery.move(first["job_id"], JobState.AWAITING_APPROVAL, "held", actor="test")
    ctl.recovery.reject(first["job_id"], "test", "rebuilt by hand")  # n1's job ends failed
    ctl.recovery.create("n1", actor="test")  # n1 again: a second job, the same node
    ctl.recovery.create("n2", actor="test")

    def status(threshold: int) -> dict:
        with db.reader(ctl.engine) as conn:
            return jobs(conn, GuardRails(breaker_threshold=threshold))["guard_rails"]

    assert len(ctl.recovery.list()) == 3
    assert status(2)["flagged_in_window"] == 2 and not status(2)["breaker_open"]
    assert status(1)["breaker_open"]
