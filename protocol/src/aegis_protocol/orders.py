"""Signed orders from the controller to one agent, and the agent's signed acknowledgment.

The controller signs an :class:`Order` with its Ed25519 order key over the canonical
encoding (:func:`aegis_protocol.signing.canonical`). The agent runs :func:`verify_order`
before it acts, which refuses, each with its own reason:

- ``forged``: the signature does not verify with the controller's order key (wrong key,
  any field edited after signing, a key id that is not the controller's);
- ``misaddressed``: the order names another node;
- ``expired``: past ``expires_at``, issued in the future beyond the allowed clock skew,
  or valid for longer than ``MAX_LIFETIME``;
- ``replayed``: its nonce was seen before (the guard remembers nonces until they expire);
- ``malformed``: the arguments do not fit the kind (e.g. a grant without a valid edge).

The agent answers with an :class:`OrderAck` signed by its own node key.
"""

from __future__ import annotations

import secrets
import time
import uuid
from typing import Annotated, Literal, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .commands import Command, CommandError, parse
from .events import Scalar
from .signing import SignatureError, key_id, sign, verify

# each kind is a verb of aegis_protocol.commands, whose model checks the order's args
OrderKind = Literal["quarantine", "release", "grant", "revoke", "release-cgroup", "rotate",
                    "attest", "fetch-secrets", "segment-policy", "revoke-ssh-cert"]
RefusalReason = Literal["forged", "replayed", "expired", "misaddressed", "malformed"]

#: Order arguments that are secrets: never shown in a repr (and never put on the ledger).
SECRET_ARGS = frozenset({"wrapped_secret_id"})
CLOCK_SKEW = 30  # seconds an order may appear to come from the future
MAX_LIFETIME = 3600  # seconds: orders are short-lived by construction


class OrderRefused(Exception):
    """The agent will not execute this order; ``reason`` says which check failed."""

    def __init__(self, reason: RefusalReason, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"order refused ({reason}): {detail}")


# Signed messages are strict (no "123" for 123, no 1.0 for 1, no true for 1): a copy
# encoded differently from what was signed does not validate, let alone verify.
class Order(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    id: uuid.UUID = Field(default_factory=uuid.uuid4, strict=False)  # a JSON string
    node_id: Annotated[str, Field(min_length=1, max_length=128)]
    kind: OrderKind
    args: dict[Annotated[str, Field(max_length=32)], Scalar | list[str]] = Field(
        default_factory=dict, max_length=16)
    nonce: Annotated[str, Field(min_length=16, max_length=64)] = Field(
        default_factory=lambda: secrets.token_urlsafe(24))
    issued_at: int
    expires_at: int

    def __repr_args__(self):  # type: ignore[no-untyped-def]
        # an argument that carries a secret (the wrapping token of fetch-secrets) is shown
        # as *** in reprs, so a log line or traceback of an order never holds it
        for name, value in super().__repr_args__():
            if name == "args" and isinstance(value, dict):
                yield name, {k: "***" if k in SECRET_ARGS else v for k, v in value.items()}
            else:
                yield name, value


class SignedOrder(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    order: Order
    key_id: Annotated[str, Field(min_length=1, max_length=64)]
    signature: Annotated[str, Field(min_length=1, max_length=256)]


class OrderAck(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    order_id: uuid.UUID = Field(strict=False)  # a JSON string
    node_id: Annotated[str, Field(min_length=1, max_length=128)]
    status: Literal["done", "refused", "failed"]
    detail: Annotated[str, Field(max_length=2000)] = ""
    at: int


class SignedAck(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    ack: OrderAck
    signature: Annotated[str, Field(min_length=1, max_length=256)]


class ReplayGuard(Protocol):
    def check_and_remember(self, nonce: str, issued_at: int, expires_at: int) -> bool:
        """True the first time ``nonce`` is seen (and remember it until ``expires_at``)."""


class MemoryReplayGuard:
    """Nonces in memory until they expire (the agent persists its own; see aegis_agent)."""

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}

    def check_and_remember(self, nonce: str, issued_at: int, expires_at: int) -> bool:
        del issued_at
        now = int(time.time())
        self.seen = {n: e for n, e in self.seen.items() if e + CLOCK_SKEW >= now}
        if nonce in self.seen:
            return False
        self.seen[nonce] = expires_at
        return True


def new_order(node_id: str, kind: OrderKind, args: dict | None = None, *,
              lifetime: int = 300, now: int | None = None) -> Order:
    now = int(time.time()) if now is None else now
    order = Order(node_id=node_id, kind=kind, args=args or {}, issued_at=now,
                  expires_at=now + lifetime)
    check_args(order)
    return order


def sign_order(key: Ed25519PrivateKey, order: Order) -> SignedOrder:
    return SignedOrder(order=order, key_id=key_id(key.public_key()), signature=sign(key, order))


def sign_ack(key: Ed25519PrivateKey, ack: OrderAck) -> SignedAck:
    return SignedAck(ack=ack, signature=sign(key, ack))


def verify_ack(signed: SignedAck, node_key: Ed25519PublicKey) -> OrderAck:
    try:
        verify(node_key, signed.ack, signed.signature)
    except SignatureError as e:
        raise OrderRefused("forged", f"acknowledgment signature: {e}") from None
    return signed.ack


def check_args(order: Order) -> Command:
    """The order's command (its kind's model over ``order.args``); OrderRefused('malformed')
    when the args do not fit the kind."""
    try:
        return parse(order.kind, dict(order.args))
    except CommandError as e:
        raise OrderRefused("malformed", str(e)) from None


def verify_order(signed: SignedOrder | dict, public: Ed25519PublicKey, node_id: str,
                 now: int | None, replay: ReplayGuard) -> Order:
    """The order, if it is the controller's, for this node, current, new and well formed;
    otherwise OrderRefused with the reason. The nonce is only remembered once every other
    check passed, so a forged copy cannot burn a genuine order's nonce."""
    if isinstance(signed, dict):
        try:
            signed = SignedOrder.model_validate(signed)
        except ValidationError as e:
            raise OrderRefused("malformed", f"not an order: {e.errors()[0]['msg']} at "
                                            f"{'.'.join(map(str, e.errors()[0]['loc']))}") from None
    now = int(time.time()) if now is None else now
    if signed.key_id != key_id(public):
        raise OrderRefused("forged", f"signed with key {signed.key_id}, "
                                     f"not the controller's order key {key_id(public)}")
    try:
        verify(public, signed.order, signed.signature)
    except SignatureError as e:
        raise OrderRefused("forged", str(e)) from None
    order = signed.order
    if order.node_id != node_id:
        raise OrderRefused("misaddressed", f"order is for node {order.node_id!r}, "
                                           f"this is {node_id!r}")
    if order.expires_at <= order.issued_at or order.expires_at - order.issued_at > MAX_LIFETIME:
        raise OrderRefused("expired", "lifetime must be between 1 s and "
                                      f"{MAX_LIFETIME} s")
    if order.issued_at > now + CLOCK_SKEW:
        raise OrderRefused("expired", f"issued {order.issued_at - now} s in the future")
    if now >= order.expires_at:
        raise OrderRefused("expired", f"expired {now - order.expires_at} s ago")
    check_args(order)
    if not replay.check_and_remember(order.nonce, order.issued_at, order.expires_at):
        raise OrderRefused("replayed", f"nonce of order {order.id} was already used")
    return order
