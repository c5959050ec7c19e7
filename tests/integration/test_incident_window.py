"""The incident window (one incident per node and rule within INCIDENT_WINDOW) binds the
machine that raised it: a fresh machine enrolled under the same name (a rebuild, an
operator's re-enrollment) raises its own incident, and its quarantine order, at once.

Found by ``./aegis bench recovery``: node3, replaced after a compromise, was compromised
again 299 s later; its agent killed the binary and cut the node off, but the controller
raised nothing (the window still held the old machine's incident) and kept it trusted."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from harness_domain import enroll_trusted, make_controller, quarantine

from aegis_protocol.events import Event, EventBatch

pytestmark = pytest.mark.integration


def _cut_off(ts: int) -> EventBatch:
    return EventBatch(node_id="r1", events=[Event(
        ts_ns=ts, kind="policy", severity="critical",
        data={"rule": "quarantine-on-writable-exec", "action": "quarantine",
              "result": "node quarantined (management path only)"})])


def test_a_fresh_machine_raises_its_own_incident_within_the_window(tmp_path: Path) -> None:
    ctl = make_controller(tmp_path)
    enroll_trusted(ctl, "r1")
    ctl.intake.store("r1", _cut_off(1))
    first = ctl.intake.incidents("r1")
    assert [i["rule"] for i in first] == ["agent-quarantined-node"] and first[0]["order_id"]
    # the same machine again within the window: nothing new (a flood is one incident)
    ctl.intake.store("r1", _cut_off(2))
    assert len(ctl.intake.incidents("r1")) == 1
    # the machine is replaced: quarantined, then a fresh one enrolls under the same name
    quarantine(ctl, "r1")
    time.sleep(1.1)  # enrollment times are whole seconds: the new one comes after
    ctl.enrollment.allow_reenrollment("r1", "replaced by a fresh machine", "test")
    enroll_trusted(ctl, "r1")
    ctl.intake.store("r1", _cut_off(3))
    incidents = ctl.intake.incidents("r1")
    assert len(incidents) == 2, incidents
    assert incidents[1]["order_id"] and incidents[1]["order_id"] != incidents[0]["order_id"]
