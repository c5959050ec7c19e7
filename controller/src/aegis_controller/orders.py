"""Signed orders to nodes: create (signed with the controller's order key, recorded on the
ledger), the pending ones a node fetches, its signed acknowledgment (a done quarantine or
release moves the node's trust state), and the list operators read."""

from __future__ import annotations

import logging
import time
from typing import Any

import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aegis_protocol.orders import (
    OrderKind,
    OrderRefused,
    SignedAck,
    SignedOrder,
    new_order,
    sign_order,
    verify_ack,
)
from aegis_protocol.signing import SignatureError, load_public_key, public_key_text

from . import db, tables
from .errors import Conflict, Forbidden, Invalid, NotFound
from .ledger import Kind, Ledger, Recorder
from .nodes import NOT_LIVE, NodeState, NodeStore
from .order_bell import OrderBell
from .secrets import store as secrets_store
from .trust import TransitionRefused, transition

log = logging.getLogger(__name__)
_o = tables.orders.c

#: The trust state a done order of this kind puts its node in.
_STATE_AFTER = {"quarantine": NodeState.QUARANTINED, "release": NodeState.TRUSTED}


class Orders:
    """Orders signed by ``signer``; agents got its public half (:attr:`key`) at enrollment."""

    def __init__(self, nodes: NodeStore, ledger: Ledger, signer: Ed25519PrivateKey) -> None:
        self.nodes = nodes
        self.ledger = ledger
        self.signer = signer
        #: rung for a node once an order for it committed (its agent's long poll wakes)
        self.bell = OrderBell()

    @property
    def key(self) -> str:
        return public_key_text(self.signer.public_key())

    def create(self, node_id: str, kind: OrderKind, args: dict, actor: str,
               lifetime: int = 300) -> SignedOrder:
        with self.ledger.recording() as rec:
            return self.create_in(rec, node_id, kind, args, actor, lifetime)

    def create_in(self, rec: Recorder, node_id: str, kind: OrderKind, args: dict, actor: str,
                  lifetime: int = 300, ledger_args: dict | None = None) -> SignedOrder:
        """:meth:`create` inside the caller's recording transaction (with its other
        writes). A refusal is raised before anything is written. The ledger records
        ``ledger_args`` (default ``args``) without any wrapping token; a quarantine order
        also asks for the node's leased secrets to be revoked, whatever its agent does."""
        state = self.nodes.state_in(rec.conn, node_id)
        if state in NOT_LIVE:
            raise Conflict(f"node {node_id!r} is {state}: it takes no orders")
        try:
            order = new_order(node_id, kind, args, lifetime=lifetime)
        except OrderRefused as e:
            raise Invalid(e.detail) from None
        except ValueError as e:
            raise Invalid(f"order: {e}") from None
        try:
            signed = sign_order(self.signer, order)
        except ValueError as e:
            raise Invalid(f"order: {e}") from None
        rec.conn.execute(tables.orders.insert().values(
            order_id=str(order.id), node_id=node_id, kind=kind,
            signed=signed.model_dump_json(), status="pending",
            created_at=order.issued_at, expires_at=order.expires_at))
        rec.append(Kind.ORDER, node_id, {
            "order_id": str(order.id), "kind": kind,
            "args": secrets_store.ledger_args(args if ledger_args is None else ledger_args),
            "expires_at": order.expires_at}, actor=actor)
        if kind == "quarantine":
            secrets_store.request_revocation(rec.conn, node_id,
                                             f"quarantine order {order.id} created")
            self.nodes.notify_after(rec, node_id)
        rec.after_commit.append(lambda: self.bell.ring(node_id))
        return signed

    def pending(self, node_id: str) -> list[SignedOrder]:
        """The node's unexpired pending orders (secrets only while it is trusted)."""
        now = int(time.time())
        with db.errors(self.nodes.engine), db.reader(self.nodes.engine) as conn:
            q = sa.select(_o.signed).where(
                _o.node_id == node_id, _o.status == "pending", _o.expires_at > now)
            if self.nodes.state_in(conn, node_id) != NodeState.TRUSTED or \
                    secrets_store.SecretsStore.quarantine_pending(conn, node_id):
                q = q.where(_o.kind != secrets_store.KIND)
            rows = conn.execute(q.order_by(_o.created_at))
            return [SignedOrder.model_validate_json(r.signed) for r in rows]

    def acknowledge(self, node_id: str, order_id: str, signed: SignedAck) -> dict[str, str]:
        ack = signed.ack
        node = self.nodes.get(node_id)
        if ack.node_id != node_id or str(ack.order_id) != order_id:
            raise Forbidden("acknowledgment is for another node or order")
        try:
            verify_ack(signed, load_public_key(node["identity_key"] or ""))
        except (OrderRefused, SignatureError) as e:
            self.ledger.append(Kind.ACK, node_id, {"order_id": order_id, "refused": str(e)},
                               actor=f"node:{node_id}")
            raise Forbidden(f"acknowledgment refused: {e}") from None
        with self.ledger.recording() as rec:
            row = rec.conn.execute(sa.select(tables.orders).where(
                _o.order_id == order_id, _o.node_id == node_id)).first()
            if row is None:
                raise NotFound(f"no order {order_id} for node {node_id!r}")
            if row.status != "pending":
                raise Conflict(f"order {order_id} was already acknowledged ({row.status})")
            values = {"status": ack.status, "acked_at": ack.at, "detail": ack.detail}
            if row.kind == secrets_store.KIND:  # the wrapping token is spent or useless now
                values["signed"] = secrets_store.scrub_signed(row.signed)
            rec.conn.execute(tables.orders.update().where(_o.order_id == order_id)
                             .values(**values))
            rec.append(Kind.ACK, node_id, {"order_id": order_id, "status": ack.status,
                                           "detail": ack.detail}, actor=f"node:{node_id}")
            if row.kind == secrets_store.KIND and ack.status == "done":
                problem = secrets_store.record_report(rec, node_id, row, ack)
                if problem is not None:
                    rec.conn.execute(tables.orders.update().where(_o.order_id == order_id)
                                     .values(status="failed",
                                             detail=f"controller: {problem}"[:2000]))
                    log.warning("fetch-secrets acknowledgment with a bad report", extra={
                        "node": node_id, "order_id": order_id, "why": problem})
                self.nodes.notify_after(rec, node_id)
            target = _STATE_AFTER.get(row.kind)
            current = self.nodes.state_in(rec.conn, node_id)
            if ack.status == "done" and target is not None and current != target:
                try:
                    self.nodes.move_in(rec, node_id, transition(
                        current, target, f"{row.kind} order {order_id} executed",
                        operator=True), "controller")
                except TransitionRefused as e:  # e.g. retired since: the ack still stands
                    log.info("order acknowledged, state not moved", extra={
                        "node": node_id, "order_id": order_id, "why": str(e)})
        return {"order_id": order_id, "status": ack.status}

    def all(self, node_id: str | None = None) -> list[dict[str, Any]]:
        q = sa.select(_o.order_id, _o.node_id, _o.kind, _o.status, _o.created_at,
                      _o.expires_at, _o.detail)
        if node_id:
            q = q.where(_o.node_id == node_id)
        with db.errors(self.nodes.engine), db.reader(self.nodes.engine) as conn:
            return [dict(r._mapping) for r in conn.execute(q.order_by(_o.created_at))]
