"""The label policies in force (``segment_policies``, every version kept) and what each node
was last sent (``segment_pushes``): :meth:`LabelPolicies.recompile_in` compiles the
policies against the trusted nodes now and queues a signed ``segment-policy`` order for
every node whose set changed, in the caller's transaction. It is the one function the
trust-state transitions (:class:`~..nodes.NodeStore` ``changed`` hooks: join, trust,
suspicion, quarantine, rebuild, retirement) and label/address changes call.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection, Engine

from aegis_protocol.commands import MAX_POLICY_ENTRIES
from aegis_protocol.orders import MAX_LIFETIME

from .. import db, document_versions, tables
from ..access.policy import PolicyError
from ..errors import Invalid
from ..ledger import Kind, Ledger, Recorder
from ..nodes import NOT_LIVE, NodeState, NodeStore
from ..orders import Orders
from .label_policy import Node, PolicySet, compile_for, digest_of, load, parse

_p = tables.segment_policies.c
_s = tables.segment_pushes.c
_n = tables.nodes.c
log = logging.getLogger(__name__)
ACTOR = "controller:segment"
SUBJECT = "segment-policy"
_EMPTY = {"policies": [], "entries": []}


class LabelPolicies:
    def __init__(self, engine: Engine, ledger: Ledger, nodes: NodeStore, orders: Orders,
                 label_keys: Any) -> None:
        self.engine = engine
        self.ledger = ledger
        self.nodes = nodes
        self.orders = orders
        self.label_keys = label_keys  # (conn) -> the label keys nodes carry

    # -- the policies (operators) ---------------------------------------------------------
    def set_policy(self, text: str, actor: str) -> dict[str, Any]:
        """Validate ``text`` and make it the label policies in force, then push what
        changed; a refusal changes nothing."""
        with self.ledger.recording() as rec:
            try:
                policies = load(text, self.label_keys(rec.conn))
            except PolicyError as e:
                raise Invalid(f"label policy: {e}") from None
            return self._store_in(rec, policies, actor, "policy_set")

    def set_mode(self, name: str, mode: str, actor: str) -> dict[str, Any]:
        """Switch one policy between observe and enforce (a new version of the set)."""
        with self.ledger.recording() as rec:
            _version, current = self.current_in(rec.conn)
            try:
                policies = current.with_mode(name, mode)
            except PolicyError as e:
                raise Invalid(f"label policy: {e}") from None
            return self._store_in(rec, policies, actor, "policy_mode")

    def _store_in(self, rec: Recorder, policies: PolicySet, actor: str,
                  event: str) -> dict[str, Any]:
        digest = policies.digest()
        version = document_versions.add(rec.conn, tables.segment_policies,
                                        policies.document(), digest, actor)
        rec.append(Kind.ACCESS_GRANT, SUBJECT, {
            "event": event, "version": version, "digest": digest,
            "policies": {p.name: p.mode for p in policies.policies}}, actor=actor)
        pushed = self.recompile_in(rec, f"label policies version {version}", strict=True)
        return {"version": version, "digest": digest, "pushed": pushed}

    def current_in(self, conn: Connection) -> tuple[int, PolicySet]:
        version, doc = document_versions.newest(conn, tables.segment_policies,
                                                "label policy",
                                                "aegis-controller segment policy set FILE")
        # validated when set: its label keys stand
        keys = {k for p in doc["policies"] for side in ("from", "to") for k in p.get(side, {})}
        return version, parse(doc, frozenset(keys))

    def current(self) -> dict[str, Any]:
        with db.errors(self.engine), db.reader(self.engine) as conn:
            version, policies = self.current_in(conn)
        return {"version": version, "digest": policies.digest(), **policies.document()}

    def status(self) -> list[dict[str, Any]]:
        """What each node was last sent, and its order's state."""
        o = tables.orders.c
        with db.errors(self.engine), db.reader(self.engine) as conn:
            rows = conn.execute(sa.select(tables.segment_pushes, o.status.label("order_status"))
                                .join(tables.orders, o.order_id == _s.order_id, isouter=True)
                                .order_by(_s.node_id)).all()
            return [{"node_id": r.node_id, "digest": r.digest, "order_id": r.order_id,
                     "order_status": r.order_status, "pushed_at": r.pushed_at,
                     **json.loads(r.document)} for r in rows]

    # -- compile and push -----------------------------------------------------------------
    @staticmethod
    def _trusted(conn: Connection) -> list[Node]:
        rows = conn.execute(sa.select(_n.node_id, _n.address, _n.labels).where(
            _n.state == NodeState.TRUSTED, _n.address.is_not(None), _n.labels.is_not(None)
        ).order_by(_n.node_id))
        return [Node(r.node_id, r.address, json.loads(r.labels)) for r in rows]

    def recompile_in(self, rec: Recorder, reason: str, force: str | None = None,
                     strict: bool = False) -> list[str]:
        """Compile the policies in force against the trusted nodes now and queue a signed
        ``segment-policy`` order for each live node whose set differs from what it was
        last sent (and for ``force``, a node that just turned trusted: an order it missed
        while away may have expired). Returns the order ids. A node whose set would be
        over :data:`MAX_POLICY_ENTRIES` is refused (``strict``: a policy being set) or
        keeps its last set, logged (a trust transition never fails for it)."""
        conn = rec.conn
        if conn.execute(sa.select(_p.version).limit(1)).first() is None:
            return []  # no label policy was ever set: nothing to keep in step
        _version, policies = self.current_in(conn)
        wanted = compile_for(policies, self._trusted(conn))
        sent = {r.node_id: r.digest for r in conn.execute(sa.select(_s.node_id, _s.digest))}
        made = []
        for node_id, state in conn.execute(sa.select(_n.node_id, _n.state)
                                           .order_by(_n.node_id)).all():
            if state in NOT_LIVE:
                continue
            body = wanted.get(node_id, _EMPTY)
            if len(body["entries"]) > MAX_POLICY_ENTRIES:
                why = (f"node {node_id}: the label policies compile to "
                       f"{len(body['entries'])} entries, over the {MAX_POLICY_ENTRIES} one "
                       "order carries; narrow the selectors")
                if strict:
                    raise Invalid(f"label policy: {why}")
                log.warning("label policy set not sent: %s", why,
                            extra={"node": node_id, "reason": reason})
                continue
            digest = digest_of(body)
            again = node_id == force and (node_id in wanted or node_id in sent)
            if sent.get(node_id, digest_of(_EMPTY)) == digest and not again:
                continue
            signed = self.orders.create_in(
                rec, node_id, "segment-policy", dict(body), ACTOR, lifetime=MAX_LIFETIME,
                ledger_args={"policies": body["policies"], "entries": len(body["entries"]),
                             "digest": digest, "reason": reason})
            values = {"digest": digest, "document": json.dumps(body),
                      "order_id": str(signed.order.id), "pushed_at": int(time.time())}
            if node_id in sent:
                conn.execute(tables.segment_pushes.update()
                             .where(_s.node_id == node_id).values(**values))
            else:
                conn.execute(tables.segment_pushes.insert().values(node_id=node_id, **values))
            made.append(str(signed.order.id))
        return made

    def node_changed_in(self, rec: Recorder, node_id: str, reason: str,
                        turned_trusted: bool = False) -> None:
        """Hook of :class:`~..nodes.NodeStore`: a node moved or its labels changed."""
        self.recompile_in(rec, f"node {node_id}: {reason}",
                          force=node_id if turned_trusted else None)
