"""The agent's side of signed orders: verify, refuse or execute, acknowledge.

Nonces of accepted orders are kept in a file (written atomically) until the orders
expire, so an agent restarted after a crash still refuses a replay of an order it had
already executed. With each nonce the file keeps the signed acknowledgment sent for it:
when the same order comes again (its acknowledgment was lost on the way), the agent sends
that original acknowledgment again instead of refusing the order as a replay.

The enforcement kinds run as ``Enforcement`` verbs with source ``order``
(:func:`order_handlers`); their acknowledgment carries the verb's result as JSON, the same
result the control socket answers.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from aegis_protocol.commands import ENFORCEMENT_VERBS, parse
from aegis_protocol.files import write_atomically
from aegis_protocol.orders import (
    CLOCK_SKEW,
    OrderAck,
    OrderKind,
    OrderRefused,
    SignedAck,
    SignedOrder,
    sign_ack,
    verify_order,
)

from .enforcement import Enforcement

Handler = Callable[[dict[str, Any]], str]


class FileReplayGuard:
    """Seen nonces with their expiry, and the signed acknowledgment sent for each, in a
    JSON file replaced atomically on each change.

    If the file is unreadable it is set aside, and every order issued before that moment
    is refused as a possible replay (its nonce may have been in the lost file); orders
    issued afterwards are accepted as usual.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.not_before = 0
        try:
            data = json.loads(self.path.read_text())
            self.seen: dict[str, int] = {str(k): int(v) for k, v in data["seen"].items()}
            self.not_before = int(data.get("not_before", 0))
            self.acks: dict[str, dict[str, Any]] = {
                str(k): dict(v) for k, v in data.get("acks", {}).items() if k in self.seen}
        except FileNotFoundError:
            self.seen, self.acks = {}, {}
        except (ValueError, KeyError, TypeError, AttributeError):
            os.replace(self.path, self.path.with_name(self.path.name + ".corrupt"))
            self.seen, self.acks = {}, {}
            self.not_before = int(time.time())
            self._save()

    def check_and_remember(self, nonce: str, issued_at: int, expires_at: int) -> bool:
        now = int(time.time())
        self.seen = {n: e for n, e in self.seen.items() if e + CLOCK_SKEW >= now}
        self.acks = {n: a for n, a in self.acks.items() if n in self.seen}
        if nonce in self.seen or issued_at < self.not_before:
            return False
        self.seen[nonce] = expires_at
        self._save()
        return True

    def remember_ack(self, nonce: str, ack: SignedAck) -> None:
        """Keep the acknowledgment sent for the order with ``nonce`` (durably, before it
        is sent) for as long as the nonce is kept."""
        if nonce in self.seen:
            self.acks[nonce] = ack.model_dump(mode="json")
            self._save()

    def ack_for(self, nonce: str, order_id: uuid.UUID) -> SignedAck | None:
        """The acknowledgment already sent for this order, if any."""
        kept = self.acks.get(nonce)
        if kept is None:
            return None
        ack = SignedAck.model_validate(kept)
        return ack if ack.ack.order_id == order_id else None

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomically(self.path, json.dumps({"seen": self.seen, "acks": self.acks,
                                                "not_before": self.not_before}).encode(),
                         mode=0o600)


class OrderExecutor:
    def __init__(self, node_id: str, controller_key: Ed25519PublicKey,
                 node_key: Ed25519PrivateKey, guard: FileReplayGuard,
                 handlers: dict[str, Handler]) -> None:
        self.node_id = node_id
        self.controller_key = controller_key
        self.node_key = node_key
        self.guard = guard
        self.handlers = handlers

    def execute(self, signed: SignedOrder | dict, now: int | None = None) -> SignedAck:
        """Verify and run one order; always returns a signed acknowledgment (refused,
        failed or done) so the controller learns what happened. An order already run
        (its nonce is known) gets the acknowledgment it got then, not a refusal: the
        controller asks again when that acknowledgment did not reach it."""
        now = int(time.time()) if now is None else now
        order_id = getattr(getattr(signed, "order", None), "id", None)
        if isinstance(signed, dict):
            order_id = (signed.get("order") or {}).get("id")
        try:
            order = verify_order(signed, self.controller_key, self.node_id, now, self.guard)
        except OrderRefused as e:
            # "replayed" is decided only after the signature and address were checked
            sent = self._sent_before(signed) if e.reason == "replayed" else None
            return sent or self._ack(order_id, "refused", f"{e.reason}: {e.detail}", now)
        handler = self.handlers.get(order.kind)
        if handler is None:
            ack = self._ack(order.id, "failed", f"this agent cannot execute {order.kind}", now)
        else:
            try:
                ack = self._ack(order.id, "done", handler(dict(order.args)), now)
            except Exception as e:  # any failure is reported to the controller, never raised
                ack = self._ack(order.id, "failed", f"{type(e).__name__}: {e}", now)
        self.guard.remember_ack(order.nonce, ack)
        return ack

    def _sent_before(self, signed: SignedOrder | dict) -> SignedAck | None:
        order = (signed if isinstance(signed, SignedOrder)
                 else SignedOrder.model_validate(signed)).order
        return self.guard.ack_for(order.nonce, order.id)

    def _ack(self, order_id: Any, status: str, detail: str, now: int) -> SignedAck:
        try:
            oid = uuid.UUID(str(order_id))
        except ValueError:
            oid = uuid.UUID(int=0)
        ack = OrderAck(order_id=oid, node_id=self.node_id, status=status,  # type: ignore[arg-type]
                       detail=detail[:2000], at=now)
        return sign_ack(self.node_key, ack)


def order_handlers(enforcement: Enforcement) -> dict[str, Handler]:
    """The order kinds that are enforcement verbs, each run through ``enforcement`` with
    source ``order``; the acknowledgment's detail is the verb's result as JSON."""

    def handler(kind: str) -> Handler:
        def run(args: dict[str, Any]) -> str:
            outcome = enforcement.run(parse(kind, args), "order")
            return json.dumps(outcome.result, default=str, sort_keys=True)
        return run

    return {kind: handler(kind) for kind in get_args(OrderKind) if kind in ENFORCEMENT_VERBS}
