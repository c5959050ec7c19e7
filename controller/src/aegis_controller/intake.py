"""Event intake: a node's event batches stored exactly once, and the incidents the rules
in :mod:`.incidents` raise from newly stored events (a quarantine rule orders one) — at
most one per node, rule and window, however many events match."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite

from aegis_protocol.events import Event, EventBatch, EventBatchAck

from . import db, tables
from .errors import DomainError, Forbidden
from .incidents import INCIDENT_WINDOW, IncidentRule, first_per_rule, summarize
from .ledger import Ledger
from .nodes import NOT_LIVE, NodeStore
from .orders import Orders

log = logging.getLogger(__name__)
#: ``json.dumps(data, sort_keys=True)`` without building an encoder per call (dumps makes
#: one for every call with a non-default option: per event, on the intake's hot path)
_encode_data = json.JSONEncoder(sort_keys=True).encode


#: SQLite: ``INSERT … ON CONFLICT (node_id, event_id) DO NOTHING RETURNING event_id``, run
#: with every row of a batch at once (SQLAlchemy sends them as multi-row VALUES).
_SQLITE_INSERT_EVENTS = (
    sqlite.insert(tables.events).on_conflict_do_nothing(index_elements=["node_id", "event_id"])
    .returning(tables.events.c.event_id))


#: PostgreSQL: the batch as five arrays through ``unnest`` — one short statement that
#: psycopg parses once and then runs prepared. A multi-row VALUES (as SQLite gets) is 3,500
#: parameters for 500 events, and psycopg parsed that text again for every batch: 44 % of
#: the controller's CPU per event (py-spy, ``./aegis bench controller`` on PostgreSQL).
#: Same rows, same ``ON CONFLICT DO NOTHING``, same ``RETURNING``.
_PG_INSERT_EVENTS = sa.text(
    "INSERT INTO events (node_id, event_id, ts_ns, kind, severity, data, received_at) "
    "SELECT :node_id, e.event_id, e.ts_ns, e.kind, e.severity, e.data, :received_at "
    "FROM unnest(CAST(:event_ids AS text[]), CAST(:ts_ns AS bigint[]), "
    "CAST(:kinds AS text[]), CAST(:severities AS text[]), CAST(:data AS text[])) "
    "AS e(event_id, ts_ns, kind, severity, data) "
    "ON CONFLICT (node_id, event_id) DO NOTHING RETURNING event_id")


def _store_rows(conn: sa.Connection, node_id: str, now: int,
                unique: dict[str, Event]) -> set[str]:
    """Insert the events not stored yet (one statement); the ids it inserted."""
    if not unique:
        return set()
    if conn.dialect.name == "postgresql":
        events = unique.values()
        result = conn.execute(_PG_INSERT_EVENTS, {
            "node_id": node_id, "received_at": now, "event_ids": list(unique),
            "ts_ns": [ev.ts_ns for ev in events], "kinds": [ev.kind for ev in events],
            "severities": [ev.severity for ev in events],
            "data": [_encode_data(ev.data) for ev in events]})
    else:
        result = conn.execute(_SQLITE_INSERT_EVENTS, [
            {"node_id": node_id, "event_id": event_id, "ts_ns": ev.ts_ns, "kind": ev.kind,
             "severity": ev.severity, "data": _encode_data(ev.data), "received_at": now}
            for event_id, ev in unique.items()])
    return {row[0] for row in result}


class Intake:
    """Events in, incidents out."""

    def __init__(self, nodes: NodeStore, ledger: Ledger, orders: Orders,
                 window: int = INCIDENT_WINDOW) -> None:
        self.nodes = nodes
        self.ledger = ledger
        self.orders = orders
        self.window = window
        #: told (node id, event) for each newly stored event, after it committed; just-in-
        #: time access learns here which granted edges the agent dropped as idle
        self.listeners: list[Callable[[str, Event], None]] = []
        #: told (node id, the batch's newly stored events) once per batch, after it
        #: committed; an SSH grant's session commands go on the ledger here
        self.batch_listeners: list[Callable[[str, list[Event]], None]] = []

    def store(self, node_id: str, batch: EventBatch) -> EventBatchAck:
        """Store a batch idempotently: an event id already stored for this node is counted
        as a duplicate, never stored twice (agents resend until acknowledged)."""
        if batch.node_id != node_id:
            raise Forbidden(f"batch is for node {batch.node_id!r} but the client "
                            f"certificate is {node_id!r}")
        node = self.nodes.get(node_id)
        if node["state"] in NOT_LIVE:
            raise Forbidden(f"node {node_id!r} is {node['state']}: enroll first")
        engine = self.nodes.engine
        now = int(time.time())
        # One event per id, the first one sent: a batch may carry an id twice (a resend
        # merged into a new batch); the second counts as a duplicate.
        unique: dict[str, Event] = {}
        for ev in batch.events:
            unique.setdefault(str(ev.id), ev)
        with db.transaction(engine) as conn:
            # One statement for the whole batch, in the transaction that marks the node seen:
            # an id already stored is skipped by the database (ON CONFLICT DO NOTHING), so a
            # batch resent after a crash on either side is stored once. RETURNING names the
            # rows inserted (psycopg's rowcount is -1 for skipped conflicts).
            inserted = _store_rows(conn, node_id, now, unique)
            conn.execute(tables.nodes.update().where(tables.nodes.c.node_id == node_id)
                         .values(last_seen=now))
        new = [ev for event_id, ev in unique.items() if event_id in inserted]
        stored = len(new)
        for rule, ev in first_per_rule(new):
            self._raise_incident(node_id, rule, ev, now)
        for ev in new:
            for listener in list(self.listeners):
                try:
                    listener(node_id, ev)
                except Exception:
                    log.exception("event listener failed", extra={"node": node_id,
                                                                  "kind": ev.kind})
        for batch_listener in list(self.batch_listeners) if new else []:
            try:
                batch_listener(node_id, new)
            except Exception:
                log.exception("event batch listener failed", extra={"node": node_id})
        return EventBatchAck(stored=stored, duplicates=len(batch.events) - stored)

    def _raise_incident(self, node_id: str, rule: IncidentRule, ev: Event, now: int) -> None:
        """The incident, and its quarantine order if the rule has one, unless the rule
        already raised one for this machine within the window: the check and the writes are
        one write transaction holding the ledger's lock, so concurrent batches of one node
        raise one incident and one order, not one each. The window binds the machine: an
        incident from before the node's last enrollment (a rebuild, a re-enrollment) was
        the old machine's, and the fresh one raises its own at once."""
        _i = tables.incidents.c
        with self.ledger.recording() as rec:
            db.serialise_ledger(rec.conn)  # PostgreSQL: the check waits for the other writer
            enrolled = rec.conn.execute(sa.select(tables.nodes.c.enrolled_at).where(
                tables.nodes.c.node_id == node_id)).scalar()
            since = max(now - self.window, int(enrolled or 0) - 1)
            if rec.conn.execute(sa.select(_i.incident_id).where(
                    _i.node_id == node_id, _i.rule == rule.name,
                    _i.created_at > since).limit(1)).first() is not None:
                return
            order_id = None
            if rule.quarantine:
                try:  # refused before anything is written (e.g. the node is retired)
                    order_id = str(self.orders.create_in(
                        rec, node_id, "quarantine", {"level": rule.quarantine,
                                                     "reason": f"incident rule {rule.name}"},
                        "controller:incidents").order.id)
                except DomainError:
                    order_id = None
            rec.conn.execute(tables.incidents.insert().values(
                node_id=node_id, rule=rule.name, severity=rule.severity, event_id=str(ev.id),
                summary=summarize(ev), created_at=int(time.time()), order_id=order_id))

    def incidents(self, node_id: str | None = None) -> list[dict[str, Any]]:
        q = sa.select(tables.incidents).order_by(tables.incidents.c.incident_id)
        if node_id:
            q = q.where(tables.incidents.c.node_id == node_id)
        with db.errors(self.nodes.engine), db.reader(self.nodes.engine) as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    def events(self, node_id: str | None = None, kinds: Sequence[str] = (),
               limit: int = 100) -> list[dict[str, Any]]:
        """The newest ``limit`` stored events (of ``kinds``, of ``node_id``), oldest first,
        each with its data decoded."""
        ev = tables.events
        q = sa.select(ev).order_by(ev.c.ts_ns.desc()).limit(limit)
        if node_id:
            q = q.where(ev.c.node_id == node_id)
        if kinds:
            q = q.where(ev.c.kind.in_(list(kinds)))
        with db.errors(self.nodes.engine), db.reader(self.nodes.engine) as conn:
            rows = [dict(r._mapping) for r in conn.execute(q)]
        for row in rows:
            row["data"] = json.loads(row["data"])
        return rows[::-1]

    def event_count(self, node_id: str | None = None) -> int:
        q = sa.select(sa.func.count()).select_from(tables.events)
        if node_id:
            q = q.where(tables.events.c.node_id == node_id)
        with db.errors(self.nodes.engine), db.reader(self.nodes.engine) as conn:
            return int(conn.execute(q).scalar_one())
