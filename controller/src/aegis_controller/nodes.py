"""Nodes and their trust state: the :class:`NodeState` enum and :class:`NodeStore`, the one
place that reads and writes the ``nodes`` table.

A state changes only through :meth:`NodeStore.move`, with a :class:`~.trust.Transition`
computed from the state it leaves; the move is applied in one write transaction
(``BEGIN IMMEDIATE`` on SQLite) together with its ledger record (both or neither), so of
two concurrent moves of one node exactly one wins and the other gets
:class:`~.errors.Conflict`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy import Connection, Engine

from . import db, tables
from .errors import Conflict, NotFound
from .ledger import Kind, Ledger, Recorder

if TYPE_CHECKING:
    from .trust import Transition

_n = tables.nodes.c
log = logging.getLogger(__name__)


class NodeState(StrEnum):
    """Trust states, in the order a node normally goes through them."""

    PROVISIONING = "provisioning"
    ENROLLED = "enrolled"
    TRUSTED = "trusted"
    SUSPECT = "suspect"
    QUARANTINED = "quarantined"
    REBUILDING = "rebuilding"
    RETIRED = "retired"


#: States in which a node takes no orders (not enrolled yet, or gone).
NOT_LIVE = frozenset({NodeState.PROVISIONING, NodeState.RETIRED})
#: States in which a node gets no new certificate.
NO_CERTIFICATE = frozenset({NodeState.REBUILDING, NodeState.RETIRED})
#: States whose heartbeats are watched.
WATCHED = (NodeState.ENROLLED, NodeState.TRUSTED)


class NodeStore:
    """The nodes table: read a node, create it, move its state, update what it reports."""

    def __init__(self, engine: Engine, ledger: Ledger) -> None:
        self.engine = engine
        self.ledger = ledger
        #: told a node's id after a change of it committed (state, order, ack, heartbeat);
        #: the secrets gate listens here
        self.watchers: list[Callable[[str], None]] = []
        #: called inside the transaction that moves a node to any state but trusted, with
        #: (recorder, node id, reason); just-in-time access revokes the node's grants here
        self.leaving_trust: list[Callable[[Recorder, str, str], None]] = []
        #: called inside the transaction of every move, and of a change of the node's
        #: labels or address, with (recorder, node id, reason, turned trusted); the label
        #: policies recompile here (a node joins, leaves, is replaced or loses trust)
        self.changed: list[Callable[[Recorder, str, str, bool], None]] = []

    # -- telling watchers -----------------------------------------------------------------
    def notify_after(self, rec: Recorder, node_id: str) -> None:
        """Tell the watchers about ``node_id`` once ``rec``'s transaction has committed."""
        rec.after_commit.extend(lambda w=w: w(node_id) for w in list(self.watchers))

    def notify(self, node_id: str) -> None:
        for watcher in list(self.watchers):
            try:
                watcher(node_id)
            except Exception:
                log.exception("node watcher failed", extra={"node": node_id})

    # -- reading --------------------------------------------------------------------------
    def get(self, node_id: str) -> dict[str, Any]:
        """The node's row as a dict; :class:`NotFound` when there is none."""
        with db.errors(self.engine), db.reader(self.engine) as conn:
            row = conn.execute(sa.select(tables.nodes).where(_n.node_id == node_id)).first()
        if row is None:
            raise NotFound(f"no node {node_id!r}")
        return dict(row._mapping)

    def all(self) -> list[dict[str, Any]]:
        with db.errors(self.engine), db.reader(self.engine) as conn:
            return [dict(r._mapping) for r in conn.execute(
                sa.select(tables.nodes).order_by(_n.node_id))]

    def silent(self, states: Iterable[NodeState], since: int) -> list[dict[str, Any]]:
        """Nodes in ``states`` whose last heartbeat is older than ``since``."""
        with db.errors(self.engine), db.reader(self.engine) as conn:
            return [dict(r._mapping) for r in conn.execute(sa.select(tables.nodes).where(
                _n.state.in_([str(s) for s in states]), _n.heartbeat_at < since))]

    # -- writing --------------------------------------------------------------------------
    @staticmethod
    def create_if_missing(conn: Connection, node_id: str, reason: str) -> None:
        """A new node in ``provisioning``, inside the caller's write transaction."""
        if conn.execute(sa.select(_n.node_id).where(_n.node_id == node_id)).first() is None:
            conn.execute(tables.nodes.insert().values(
                node_id=node_id, state=NodeState.PROVISIONING, reason=reason))

    def move(self, node_id: str, t: Transition, actor: str) -> None:
        """Apply ``t`` (only from the state it was computed from) and record it on the
        ledger, in one write transaction. :class:`Conflict` when the node is no longer in
        ``t.before``."""
        with self.ledger.recording() as rec:
            self.move_in(rec, node_id, t, actor)

    def move_in(self, rec: Recorder, node_id: str, t: Transition, actor: str) -> None:
        """:meth:`move` inside the caller's recording transaction (with its other writes)."""
        current = self._state(rec.conn, node_id)
        if current is None:
            raise NotFound(f"no node {node_id!r}")
        # on PostgreSQL the read takes no lock: the WHERE on the state makes a
        # concurrent second move lose there too
        if current != t.before or rec.conn.execute(tables.nodes.update().where(
                _n.node_id == node_id, _n.state == t.before
        ).values(state=t.after, reason=t.reason)).rowcount != 1:
            raise Conflict(f"node {node_id!r} is {current} now, no longer {t.before}: "
                           f"not moved to {t.after}")
        rec.append(Kind.STATE_CHANGE, node_id,
                   {"from": t.before, "to": t.after, "reason": t.reason}, actor=actor)
        if t.after != NodeState.TRUSTED:  # its leased secrets go, with or without its agent
            from .secrets.store import request_revocation  # it imports this module

            request_revocation(rec.conn, node_id, f"node {t.before} -> {t.after}: {t.reason}")
            for hook in self.leaving_trust:
                hook(rec, node_id, f"{t.before} -> {t.after}: {t.reason}")
        self.changed_in(rec, node_id, f"{t.before} -> {t.after}: {t.reason}",
                        t.after == NodeState.TRUSTED)
        self.notify_after(rec, node_id)

    def changed_in(self, rec: Recorder, node_id: str, reason: str,
                   turned_trusted: bool = False) -> None:
        """Tell the ``changed`` hooks, inside ``rec``'s transaction."""
        for hook in self.changed:
            hook(rec, node_id, reason, turned_trusted)

    @staticmethod
    def _state(conn: Connection, node_id: str) -> str | None:
        return conn.execute(sa.select(_n.state).where(_n.node_id == node_id)).scalar()

    def state_in(self, conn: Connection, node_id: str) -> str:
        """The node's state as ``conn``'s transaction sees it; :class:`NotFound` if none."""
        return self.row_in(conn, node_id)["state"]

    @staticmethod
    def row_in(conn: Connection, node_id: str) -> dict[str, Any]:
        """The node's row as ``conn``'s transaction sees it; :class:`NotFound` if none."""
        row = conn.execute(sa.select(tables.nodes).where(_n.node_id == node_id)).first()
        if row is None:
            raise NotFound(f"no node {node_id!r}")
        return dict(row._mapping)

    def record_enrollment(self, rec: Recorder, node_id: str, *, serial: str,
                          identity_key: str, now: int, actor: str) -> None:
        """The node enrolled (again) with this certificate and key, inside the caller's
        recording transaction; its state moves only as :func:`~.trust.after_enrollment`
        allows (TransitionRefused for a suspect, quarantined or retired node)."""
        from .trust import after_enrollment  # trust imports this module

        t = after_enrollment(self.state_in(rec.conn, node_id))
        if t is not None:
            self.move_in(rec, node_id, t, actor)
        self.update(node_id, rec.conn, enrolled_at=now, cert_serial=serial, last_seen=now,
                    heartbeat_at=now, identity_key=identity_key)

    def set_profile(self, conn: Connection, node_id: str, profile_json: str) -> NodeState:
        """Store the node's expected profile (in the caller's transaction); returns the
        node's state."""
        state = self._state(conn, node_id)
        if state is None:
            raise NotFound(f"no node {node_id!r}")
        conn.execute(tables.nodes.update().where(_n.node_id == node_id)
                     .values(profile=profile_json))
        return NodeState(state)

    def update(self, node_id: str, conn: Connection | None = None, **values: object) -> None:
        """Write what a node reports (heartbeat, inventory, measurement, certificate
        serial...), in ``conn``'s transaction or its own. Never the trust state: that
        changes only through :meth:`move`."""
        if {"state", "reason"} & values.keys():
            raise ValueError("a node's state changes only through NodeStore.move")
        if conn is None:
            with db.transaction(self.engine) as own:
                self.update(node_id, own, **values)
            return
        conn.execute(tables.nodes.update().where(_n.node_id == node_id).values(**values))
