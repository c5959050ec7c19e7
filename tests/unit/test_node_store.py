"""The node store: one transition function whose read-then-write runs in the writer
transaction (two concurrent moves of one node: one wins, the other gets a clean Conflict),
and state tables that agree with the migrations."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from aegis_controller import db, tables
from aegis_controller.errors import Conflict, NotFound
from aegis_controller.ledger import Ledger, init_keys, load_signer
from aegis_controller.nodes import NodeState, NodeStore
from aegis_controller.trust import transition

pytestmark = pytest.mark.unit


def _store(tmp_path: Path) -> NodeStore:
    engine = db.open_engine(f"sqlite:///{tmp_path / 'controller.db'}")
    db.upgrade(engine)
    private, _public, _id = init_keys(tmp_path / "keys")
    store = NodeStore(engine, Ledger(engine, signer=load_signer(private)))
    with store.ledger.recording() as rec:
        store.create_if_missing(rec.conn, "n1", "test")
        store.record_enrollment(rec, "n1", serial="1", identity_key="k", now=0, actor="test")
    return store


def test_move_applies_a_transition_once_and_records_it(tmp_path: Path) -> None:
    store = _store(tmp_path)
    t = transition(NodeState.ENROLLED, NodeState.TRUSTED, "attested")
    store.move("n1", t, "test")
    assert store.get("n1")["state"] == NodeState.TRUSTED
    with pytest.raises(Conflict, match="'n1' is trusted now, no longer enrolled"):
        store.move("n1", t, "test")
    with pytest.raises(NotFound, match="no node 'zz'"):
        store.move("zz", t, "test")
    changes = [r.body for r in store.ledger.records() if r.kind == "state_change"]
    assert changes[1:] == [{"from": "enrolled", "to": "trusted", "reason": "attested"}]


def test_two_concurrent_moves_of_one_node_one_wins_the_other_conflicts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both threads read the state before either writes, unless the read already holds the
    write lock (BEGIN IMMEDIATE): then the second waits, reads the new state and gets a
    Conflict. A deferred transaction would let both read and one fail with "database is
    locked" (or both write)."""
    store = _store(tmp_path)
    both_read = threading.Barrier(2, timeout=1.5)
    read_state = NodeStore._state

    def slow_read(conn, node_id):  # type: ignore[no-untyped-def]
        state = read_state(conn, node_id)
        with contextlib.suppress(threading.BrokenBarrierError):
            both_read.wait()  # let the other thread read too, if it can
        return state

    monkeypatch.setattr(NodeStore, "_state", staticmethod(slow_read))
    results: list[tuple[str, str]] = []

    def move(target: NodeState) -> None:
        try:
            store.move("n1", transition(NodeState.ENROLLED, target, f"to {target}"), "test")
            results.append(("moved", target))
        except Conflict as e:
            results.append(("conflict", e.message))
        except Exception as e:  # what the test is about: no other error
            results.append(("error", repr(e)))

    threads = [threading.Thread(target=move, args=(t,))
               for t in (NodeState.TRUSTED, NodeState.SUSPECT)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(kind for kind, _ in results) == ["conflict", "moved"], results
    winner = next(target for kind, target in results if kind == "moved")
    assert store.get("n1")["state"] == winner
    # the enrollment's move, then the winner's only
    assert sum(r.kind == "state_change" for r in store.ledger.records()) == 2


def test_state_tables_are_on_the_metadata_the_migrations_target(tmp_path: Path) -> None:
    engine = db.open_engine(f"sqlite:///{tmp_path / 'controller.db'}")
    db.upgrade(engine)
    assert tables.nodes.metadata is db.metadata
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(
            conn, opts={"compare_type": True}), db.metadata)
    assert diff == []
