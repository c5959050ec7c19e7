"""An SSH grant's session commands on the ledger (aegis_controller.access.sessions): the
exec events an agent marked with a grant become ``session_command`` steps under it, with
the grant's user; a mark for another node's grant or with the wrong certificate serial
is not taken; a runaway session is capped per grant and minute with one "N more" record.
The grant's rows are written straight into the controller's database (the grant flow
itself runs against the real OpenBao in tests/integration/test_access_ssh.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_intake_flood import _open

from aegis_controller import db, tables
from aegis_controller.domain import Controller
from aegis_protocol.access import SESSION_GRANT, SESSION_SERIAL
from aegis_protocol.events import MAX_BATCH, Event, EventBatch

pytestmark = pytest.mark.unit

MINUTE_NS = 60 * 10**9
T0 = 1_800_000_000 * 10**9 // MINUTE_NS * MINUTE_NS  # a minute's start


@pytest.fixture
def ctl(tmp_path: Path) -> Controller:
    controller = _open(tmp_path, f"sqlite:///{tmp_path / 'c.db'}")  # nodes n1, n2
    with db.transaction(controller.engine) as conn:
        for rid, node, serial in (("r-adam", "n1", "77"), ("r-eve", "n2", "78")):
            conn.execute(tables.access_requests.insert().values(
                request_id=rid, service="db-ssh", rule="admin-ssh", policy_version=1,
                terms="{}", sub=f"sub-{rid}", user_name=rid[2:], groups='["admins"]',
                source="10.0.0.9", ttl=900, reason="change 11", status="granted",
                approvals="[]", created_at=1, ssh_serial=serial,
                ssh_key_id=f"{rid[2:]}@aegis-access/{rid}"))
            conn.execute(tables.access_edges.insert().values(
                request_id=rid, node_id=node, edge="10.0.0.9 -> 10.0.0.1 tcp/22",
                status="active", grant_order="o"))
    return controller


def command(ts_ns: int, filename: str, grant: str = "r-adam", serial: str = "77",
            pid: int = 100) -> Event:
    return Event(ts_ns=ts_ns, kind="exec", data={
        "pid": pid, "ppid": 99, "uid": 0, "gid": 0, "comm": Path(filename).name,
        "filename": filename, "args": f"{Path(filename).name} -x", "ino": 1, "dev": 2,
        "ssh_pid": 42, SESSION_GRANT: grant,
        SESSION_SERIAL: serial})


def steps(ctl: Controller, request_id: str) -> list[dict]:
    return [r.body for r in ctl.ledger.records()
            if r.kind == "access_grant" and r.subject == f"access:{request_id}"]


def test_marked_commands_go_on_the_ledger_under_the_grant_with_its_user(ctl) -> None:
    batch = [command(T0 + 1, "/usr/bin/id"), command(T0 + 2, "/usr/bin/ls", pid=101),
             Event(ts_ns=T0 + 3, kind="exec", data={"pid": 5, "filename": "/usr/bin/w"}),
             command(T0 + 4, "/usr/bin/nc", grant="r-eve", serial="78"),  # n2's grant
             command(T0 + 5, "/usr/bin/xz", serial="78")]  # not r-adam's certificate
    ctl.intake.store("n1", EventBatch(node_id="n1", events=batch))
    got = steps(ctl, "r-adam")
    assert [(s["event"], s["filename"], s["pid"]) for s in got] == [
        ("session_command", "/usr/bin/id", 100), ("session_command", "/usr/bin/ls", 101)]
    assert got[0]["user"] == {"sub": "sub-r-adam", "name": "adam", "groups": ["admins"]}
    assert got[0]["node"] == "n1" and got[0]["at_ns"] == T0 + 1 and got[0]["args"] == "id -x"
    assert got[0]["ssh_serial"] == "77"
    assert steps(ctl, "r-eve") == []
    # resent (at-least-once delivery): stored once, recorded once
    ctl.intake.store("n1", EventBatch(node_id="n1", events=batch))
    assert len(steps(ctl, "r-adam")) == 2
    assert ctl.ledger.verify().ok


def test_a_runaway_session_is_capped_per_minute_with_a_count_of_the_rest(ctl) -> None:
    ctl.access.sessions.cap = 50
    flood = [command(T0 + i, "/usr/bin/true", pid=1000 + i) for i in range(10_000)]
    for i in range(0, len(flood), MAX_BATCH):
        ctl.intake.store("n1", EventBatch(node_id="n1", events=flood[i:i + MAX_BATCH]))
    assert len(steps(ctl, "r-adam")) == 50  # the rest is counted, not recorded yet
    # the next minute's first command closes the last one with its summary
    ctl.intake.store("n1", EventBatch(node_id="n1", events=[
        command(T0 + MINUTE_NS + 5, "/usr/bin/id", pid=7)]))
    got = steps(ctl, "r-adam")
    assert len(got) == 52
    summary = got[50]
    assert summary["event"] == "session_commands_capped"
    assert (summary["recorded"], summary["more"]) == (50, 9_950)
    assert summary["minute"] == T0 // 10**9 and summary["user"]["name"] == "adam"
    assert summary["summary"] == "9950 more commands in this minute"
    assert got[51]["filename"] == "/usr/bin/id"
    # a minute that ends with no later command is closed by the periodic flush
    ctl.intake.store("n1", EventBatch(node_id="n1", events=[
        command(T0 + MINUTE_NS + 10 + i, "/usr/bin/true", pid=2000 + i) for i in range(60)]))
    assert ctl.access.sessions.flush(T0 + MINUTE_NS + 30) == 0  # that minute is not over
    assert ctl.access.sessions.flush(T0 + 2 * MINUTE_NS) == 1
    last = steps(ctl, "r-adam")[-1]
    assert (last["event"], last["more"]) == ("session_commands_capped", 11)
    assert ctl.access.sessions.flush(T0 + 3 * MINUTE_NS) == 0
    assert ctl.ledger.verify().ok
