"""An enrolled node cannot overload the controller (issue 12 item 12): a batch of matching
events raises one incident and one order per rule and window, and attestation challenges
do not pile up (used and expired nonces are purged, outstanding ones capped)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from aegis_controller import attestation, db, tables
from aegis_controller.domain import Controller, open_controller
from aegis_controller.ledger import init_keys
from aegis_controller.settings import Settings
from aegis_protocol.events import MAX_BATCH, Event, EventBatch

pytestmark = pytest.mark.unit


def _open(tmp_path: Path, db_url: str) -> Controller:
    settings = Settings.resolve(state_dir=tmp_path, db_url=db_url)
    init_keys(settings.key_dir)
    controller = open_controller(settings)
    with db.transaction(controller.engine) as conn:
        for node in ("n1", "n2"):
            conn.execute(tables.nodes.insert().values(node_id=node, state="enrolled",
                                                      reason="test", enrolled_at=1))
    return controller


@pytest.fixture
def ctl(tmp_path: Path) -> Controller:
    return _open(tmp_path, f"sqlite:///{tmp_path / 'c.db'}")


def _quarantine_events(n: int) -> EventBatch:
    return EventBatch(node_id="n1", events=[
        Event(ts_ns=i, kind="policy", severity="critical",
              data={"rule": "scan", "action": "quarantine", "result": "ok"})
        for i in range(n)])


def _count(ctl: Controller, table: sa.Table, **where: str) -> int:
    q = sa.select(sa.func.count()).select_from(table).where(
        *(table.c[k] == v for k, v in where.items()))
    with ctl.engine.connect() as conn:
        return int(conn.execute(q).scalar_one())


def test_a_batch_of_a_thousand_quarantine_events_raises_one_incident_and_one_order(ctl):
    before = ctl.ledger.head().seq if ctl.ledger.head() else 0
    ack = ctl.intake.store("n1", _quarantine_events(MAX_BATCH))
    assert (ack.stored, ack.duplicates) == (MAX_BATCH, 0)
    assert [i["rule"] for i in ctl.intake.incidents("n1")] == ["agent-quarantined-node"]
    assert _count(ctl, tables.orders, node_id="n1") == 1
    assert ctl.ledger.head().seq - before <= 2  # the order's record (and a checkpoint)
    # A second flood within the window: stored, but no new incident or order.
    assert ctl.intake.store("n1", _quarantine_events(10)).stored == 10
    assert len(ctl.intake.incidents("n1")) == 1
    assert _count(ctl, tables.orders, node_id="n1") == 1


def test_each_rule_and_node_still_raises_its_own_incident(ctl):
    mixed = EventBatch(node_id="n1", events=[
        Event(ts_ns=1, kind="exec_denied", data={"filename": "/usr/bin/nc"}),
        Event(ts_ns=2, kind="exec_denied", data={"filename": "/usr/bin/nc"}),
        Event(ts_ns=3, kind="connect_denied", data={"daddr": "10.0.0.1"})])
    ctl.intake.store("n1", mixed)
    ctl.intake.store("n2", mixed.model_copy(update={"node_id": "n2"}))
    rules = sorted((i["node_id"], i["rule"]) for i in ctl.intake.incidents())
    assert rules == [("n1", "denied-connect"), ("n1", "denied-exec"),
                     ("n2", "denied-connect"), ("n2", "denied-exec")]


def test_after_the_window_a_rule_raises_again(ctl):
    ctl.intake.window = 0  # every batch is a new window
    ctl.intake.store("n1", _quarantine_events(3))
    ctl.intake.store("n1", _quarantine_events(3).model_copy(
        update={"events": [Event(ts_ns=9, kind="exec_denied")]}))
    assert len(ctl.intake.incidents("n1")) == 2


def test_used_and_expired_nonces_are_purged_and_outstanding_ones_capped(ctl, monkeypatch):
    first = ctl.attestation.challenge("n1")
    with db.transaction(ctl.engine) as conn:  # one used, one expired (of another node)
        conn.execute(tables.nonces.update().where(tables.nonces.c.nonce == first.nonce)
                     .values(used_at=1))
        conn.execute(tables.nonces.insert().values(nonce="old", node_id="n2", expires_at=1))
    ctl.attestation.challenge("n1")
    with ctl.engine.connect() as conn:
        left = {r.nonce for r in conn.execute(sa.select(tables.nonces.c.nonce))}
    assert first.nonce not in left and "old" not in left and len(left) == 1
    for _ in range(50):
        ctl.attestation.challenge("n1")
    assert _count(ctl, tables.nonces, node_id="n1") == attestation.MAX_OUTSTANDING_CHALLENGES


def test_a_purged_used_nonce_still_cannot_be_replayed(ctl):
    nonce = ctl.attestation.challenge("n1").nonce
    spend = ctl.attestation._spend_nonce
    with db.transaction(ctl.engine) as conn:
        assert spend(conn, "n1", nonce)
    ctl.attestation.challenge("n1")  # purges the used nonce
    with db.transaction(ctl.engine) as conn:
        assert not spend(conn, "n1", nonce)  # attest() refuses it (Conflict)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_concurrent_floods_from_one_node_raise_one_incident_and_one_order(
        backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Batches arriving at once (a node's retries, or an attacker's parallel connections)
    are checked against the window and raise the incident and its order atomically: one
    of each, not one per request that read "none yet" before another one wrote."""
    ctl = _open(tmp_path, request.getfixturevalue("pg_url") if backend == "postgresql"
                else f"sqlite:///{tmp_path / 'c.db'}")
    n = 12
    start = threading.Barrier(n)
    failures: list[BaseException] = []

    def post(k: int) -> None:
        batch = EventBatch(node_id="n1", events=[
            Event(ts_ns=k, kind="policy", data={"action": "quarantine"})])
        start.wait()
        try:
            ctl.intake.store("n1", batch)
        except BaseException as e:  # reported below, not lost in the thread
            failures.append(e)

    threads = [threading.Thread(target=post, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures
    assert len(ctl.intake.incidents("n1")) == 1
    assert _count(ctl, tables.orders, node_id="n1") == 1
    assert ctl.intake.event_count("n1") == n


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_batch_is_taken_once_with_duplicates_inside_it_and_across_batches(
        backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """One INSERT … ON CONFLICT DO NOTHING per batch (issue 16): an id sent twice in one
    batch is stored once (the first copy), one already stored is a duplicate, and
    concurrent resends of the same batch store each event once in all."""
    ctl = _open(tmp_path, request.getfixturevalue("pg_url") if backend == "postgresql"
                else f"sqlite:///{tmp_path / 'c.db'}")
    events = [Event(ts_ns=i, kind="exec", data={"pid": i, "filename": f"/bin/x{i}"})
              for i in range(300)]
    twice = [*events[:200], events[5].model_copy(update={"data": {"pid": -1}}), events[7]]
    ack = ctl.intake.store("n1", EventBatch(node_id="n1", events=twice))
    assert (ack.stored, ack.duplicates) == (200, 2)
    stored = {row["event_id"]: row for row in ctl.intake.events("n1", limit=1000)}
    assert len(stored) == 200 and stored[str(events[5].id)]["data"]["pid"] == 5  # first kept
    # Across batches: 100 already stored, 100 new; then the same batch again by 6 threads.
    again = EventBatch(node_id="n1", events=events[100:])
    assert ctl.intake.store("n1", again).model_dump() == {"stored": 100, "duplicates": 100}
    acks: list = []
    threads = [threading.Thread(target=lambda: acks.append(ctl.intake.store("n1", again)))
               for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [(a.stored, a.duplicates) for a in acks] == [(0, 200)] * 6
    assert ctl.intake.event_count("n1") == 300 and ctl.intake.event_count("n2") == 0
    # The same ids from another node are that node's own events.
    assert ctl.intake.store("n2", EventBatch(node_id="n2", events=events[:3])).stored == 3
