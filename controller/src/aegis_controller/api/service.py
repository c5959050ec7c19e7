"""What the controller does for its API, without HTTP: bootstrap tokens, enrollment and
event intake, each recorded on the audit ledger (refusals included)."""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from aegis_protocol.attestation import Challenge, ExpectedProfile, SignedReport, Verdict
from aegis_protocol.enrollment import (
    EnrollRequest,
    EnrollResponse,
    Heartbeat,
    HeartbeatAck,
    Inventory,
    RenewRequest,
    RenewResponse,
)
from aegis_protocol.events import Event, EventBatch, EventBatchAck
from aegis_protocol.orders import (
    OrderKind,
    OrderRefused,
    SignedAck,
    SignedOrder,
    new_order,
    sign_order,
    verify_ack,
)
from aegis_protocol.signing import SignatureError, load_public_key, public_key_text, verify

from ..incidents import IncidentRule, incidents_for, summarize
from ..ledger import Kind, Ledger
from ..pki import CertificateAuthority, PkiError, cert_pem
from ..trust import Transition, after_attestation, judge, transition
from ..vault_wrap import Wrapped
from . import tables

NONCE_TTL = 120


class Refused(Exception):
    """A request the controller will not honour: ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(message)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass
class Controller:
    engine: Engine
    ledger: Ledger
    ca: CertificateAuthority
    order_signer: Ed25519PrivateKey  # signs orders; agents get its public half at enrollment

    @property
    def order_key(self) -> str:
        return public_key_text(self.order_signer.public_key())

    # -- tokens -----------------------------------------------------------------------------
    def issue_token(self, node_id: str, ttl: int = 600, actor: str = "operator",
                    wrap: Callable[[str], Wrapped] | None = None) -> str:
        """A one-time bootstrap token for ``node_id`` (only its hash is stored).

        With ``wrap`` (a Vault-compatible server's response wrapping), the token is
        wrapped before anything is stored and the wrapping token is returned instead: a
        failed wrap leaves no usable token behind."""
        if not 10 <= ttl <= 86400:
            raise Refused(400, "ttl must be between 10 and 86400 seconds")
        token = secrets.token_urlsafe(32)
        wrapped = wrap(token) if wrap is not None else None
        now = int(time.time())
        with self.engine.begin() as conn:
            conn.execute(tables.tokens.insert().values(
                token_hash=token_hash(token), node_id=node_id, issued_at=now,
                expires_at=now + ttl))
            if conn.execute(sa.select(tables.nodes.c.node_id).where(
                    tables.nodes.c.node_id == node_id)).first() is None:
                conn.execute(tables.nodes.insert().values(
                    node_id=node_id, state="provisioning", reason="bootstrap token issued"))
        issued: dict[str, object] = {"event": "token_issued", "expires_at": now + ttl}
        if wrapped is not None:
            issued.update(wrapped=True, wrap_accessor=wrapped.accessor)
        self.ledger.append(Kind.ENROLLMENT, node_id, issued, actor=actor)
        return wrapped.token if wrapped is not None else token

    # -- enrollment -----------------------------------------------------------------------------
    def enroll(self, req: EnrollRequest, peer: str) -> EnrollResponse:
        now = int(time.time())
        digest = token_hash(req.token)
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(tables.tokens).where(
                tables.tokens.c.token_hash == digest)).first()
            problem = None
            if row is None:
                problem = "unknown bootstrap token"
            elif row.node_id != req.node_id:
                problem = "bootstrap token was issued for another node"
            elif row.used_at is not None:
                problem = "bootstrap token was already used"
            elif row.expires_at <= now:
                problem = f"bootstrap token expired {now - row.expires_at} s ago"
            if problem is None:
                # the WHERE makes a concurrent second use lose the race
                used = conn.execute(tables.tokens.update().where(
                    tables.tokens.c.token_hash == digest, tables.tokens.c.used_at.is_(None)
                ).values(used_at=now)).rowcount
                if used != 1:
                    problem = "bootstrap token was already used"
        if problem is not None:
            self.ledger.append(Kind.TOKEN_REFUSED, req.node_id,
                               {"reason": problem, "peer": peer, "token_sha256": digest[:16]},
                               actor=f"node:{req.node_id}")
            raise Refused(403, f"enrollment refused: {problem}; ask the operator for a new "
                               "token (aegis-controller token issue NODE)")
        try:
            cert = self.ca.sign_csr(req.csr_pem, req.node_id)
            load_public_key(req.identity_key)
        except PkiError as e:
            raise Refused(400, f"csr_pem: {e}") from None
        except SignatureError as e:
            raise Refused(400, f"identity_key: {e}") from None
        serial = format(cert.serial_number, "x")
        with self.engine.begin() as conn:
            conn.execute(tables.nodes.update().where(tables.nodes.c.node_id == req.node_id)
                         .values(state="enrolled", reason="enrolled with a bootstrap token",
                                 enrolled_at=now, cert_serial=serial, last_seen=now,
                                 heartbeat_at=now, identity_key=req.identity_key))
        self.ledger.append(Kind.ENROLLMENT, req.node_id,
                           {"event": "enrolled", "cert_serial": serial, "peer": peer},
                           actor=f"node:{req.node_id}")
        return EnrollResponse(node_id=req.node_id, certificate_pem=cert_pem(cert).decode(),
                              ca_pem=self.ca.cert_path.read_text(), order_key=self.order_key,
                              not_after=int(cert.not_valid_after_utc.timestamp()))

    def current_certificate(self, node_id: str, serial: int | None) -> None:
        """Only the node's newest certificate is accepted: one replaced by a rotation or a
        re-enrollment is refused although it has not expired."""
        row = self.node(node_id)
        if serial is None or not row["cert_serial"] or int(row["cert_serial"], 16) != serial:
            raise Refused(401, f"this certificate of {node_id!r} was replaced (rotated or "
                               "re-enrolled); use the newest one")

    def renew_certificate(self, node_id: str, req: RenewRequest) -> RenewResponse:
        node = self.node(node_id)
        if node["state"] in ("rebuilding", "retired"):
            raise Refused(409, f"node {node_id!r} is {node['state']}: no new certificate")
        try:
            cert = self.ca.sign_csr(req.csr_pem, node_id)
        except PkiError as e:
            raise Refused(400, f"csr_pem: {e}") from None
        serial = format(cert.serial_number, "x")
        with self.engine.begin() as conn:
            conn.execute(tables.nodes.update().where(tables.nodes.c.node_id == node_id)
                         .values(cert_serial=serial))
        self.ledger.append(Kind.ENROLLMENT, node_id,
                           {"event": "certificate_rotated", "cert_serial": serial,
                            "previous_serial": node["cert_serial"]}, actor=f"node:{node_id}")
        return RenewResponse(certificate_pem=cert_pem(cert).decode(),
                             not_after=int(cert.not_valid_after_utc.timestamp()))

    # -- trust ------------------------------------------------------------------------------
    def _move(self, node_id: str, t: Transition, actor: str) -> None:
        """Apply a transition (only from the state it was computed from), then record it;
        the ledger writes in its own transaction (SQLite has one writer at a time)."""
        with self.engine.begin() as conn:
            moved = conn.execute(tables.nodes.update().where(
                tables.nodes.c.node_id == node_id, tables.nodes.c.state == t.before
            ).values(state=t.after, reason=t.reason)).rowcount
        if moved != 1:
            return
        self.ledger.append(Kind.STATE_CHANGE, node_id,
                           {"from": t.before, "to": t.after, "reason": t.reason}, actor=actor)

    def set_profile(self, node_id: str, profile: ExpectedProfile, actor: str) -> None:
        state = self.node(node_id)["state"]
        with self.engine.begin() as conn:
            conn.execute(tables.nodes.update().where(tables.nodes.c.node_id == node_id)
                         .values(profile=profile.model_dump_json()))
        self.ledger.append(Kind.ATTESTATION, node_id,
                           {"event": "expected_profile_set", "golden_files": len(profile.golden),
                            "bpf_entries": len(profile.bpf)},
                           actor=actor)
        if state not in ("provisioning", "retired"):
            # an enrolled node measures against the new profile now, not at its next period
            self.create_order(node_id, "attest", {"reason": "expected profile changed"}, actor)

    def challenge(self, node_id: str) -> Challenge:
        nonce = secrets.token_urlsafe(24)
        expires = int(time.time()) + NONCE_TTL
        with self.engine.begin() as conn:
            conn.execute(tables.nonces.insert().values(nonce=nonce, node_id=node_id,
                                                       expires_at=expires))
        return Challenge(nonce=nonce, expires_at=expires)

    def _refuse_report(self, node_id: str, status: int, problem: str) -> Refused:
        self.ledger.append(Kind.ATTESTATION, node_id, {"verdict": "refused", "reason": problem},
                           actor=f"node:{node_id}")
        return Refused(status, f"attestation refused: {problem}")

    def attest(self, node_id: str, signed: SignedReport) -> Verdict:
        report = signed.report
        node = self.node(node_id)
        if report.node_id != node_id:
            raise self._refuse_report(node_id, 403, f"report is for node {report.node_id!r}")
        try:
            verify(load_public_key(node["identity_key"] or ""), report, signed.signature)
        except SignatureError as e:
            raise self._refuse_report(node_id, 403, f"signature does not verify with the "
                                                    f"node's enrolled identity key ({e})"
                                      ) from None
        now = int(time.time())
        with self.engine.begin() as conn:
            used = conn.execute(tables.nonces.update().where(
                tables.nonces.c.nonce == report.nonce, tables.nonces.c.node_id == node_id,
                tables.nonces.c.used_at.is_(None), tables.nonces.c.expires_at > now,
            ).values(used_at=now)).rowcount
        if used != 1:
            raise self._refuse_report(node_id, 409, "nonce unknown, expired, for another node "
                                                    "or already used (replayed report); ask "
                                                    "for a new challenge")
        with self.engine.begin() as conn:  # kept for operators (node show, --pin-bpf)
            conn.execute(tables.nodes.update().where(tables.nodes.c.node_id == node_id)
                         .values(measurement=report.measurement.model_dump_json()))
        problems = (judge(report, ExpectedProfile.model_validate_json(node["profile"]))
                    if node["profile"] else ["no expected profile is set for this node"])
        # without an expected profile there is nothing to be trusted against: the node stays
        t = after_attestation(node["state"], problems) if node["profile"] else None
        if t is not None:
            self._move(node_id, t, f"node:{node_id}")
        state = t.after if t else node["state"]
        self.ledger.append(Kind.ATTESTATION, node_id,
                           {"verdict": "match" if not problems else "mismatch",
                            "mismatches": problems[:50], "state": state,
                            "kernel": report.measurement.kernel_release},
                           actor=f"node:{node_id}")
        reason = t.reason if t else (node["reason"] if not problems else "; ".join(problems))
        return Verdict(node_id=node_id, ok=not problems, state=state, reason=reason,
                       mismatches=problems)

    def heartbeat(self, node_id: str, hb: Heartbeat) -> HeartbeatAck:
        if hb.node_id != node_id:
            raise Refused(403, f"heartbeat is for node {hb.node_id!r} but the client "
                               f"certificate is {node_id!r}")
        node = self.node(node_id)
        now = int(time.time())
        values: dict[str, object] = {"heartbeat_at": now, "last_seen": now}
        wanted = False
        if hb.inventory is not None:
            values["inventory"] = hb.inventory.model_dump_json()
        elif hb.inventory_digest is not None:
            held = node.get("inventory")
            wanted = held is None or Inventory.model_validate_json(held).digest() != \
                hb.inventory_digest
        with self.engine.begin() as conn:
            conn.execute(tables.nodes.update().where(tables.nodes.c.node_id == node_id).values(
                **values))
        return HeartbeatAck(inventory_wanted=wanted)

    def check_deadlines(self, deadline: int, now: int | None = None) -> list[str]:
        """Nodes (enrolled or trusted) silent for more than ``deadline`` seconds become
        suspect; returns their ids."""
        now = int(time.time()) if now is None else now
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(tables.nodes).where(
                tables.nodes.c.state.in_(("enrolled", "trusted")),
                tables.nodes.c.heartbeat_at < now - deadline)).fetchall()
        for row in rows:
            self._move(row.node_id, transition(
                row.state, "suspect",
                f"no heartbeat for {now - row.heartbeat_at} s (deadline {deadline} s)"),
                "controller")
        return [row.node_id for row in rows]

    # -- orders -------------------------------------------------------------------------------
    def create_order(self, node_id: str, kind: OrderKind, args: dict, actor: str,
                     lifetime: int = 300) -> SignedOrder:
        node = self.node(node_id)
        if node["state"] in ("provisioning", "retired"):
            raise Refused(409, f"node {node_id!r} is {node['state']}: it takes no orders")
        try:
            order = new_order(node_id, kind, args, lifetime=lifetime)
        except OrderRefused as e:
            raise Refused(400, e.detail) from None
        except ValueError as e:
            raise Refused(400, f"order: {e}") from None
        signed = sign_order(self.order_signer, order)
        with self.engine.begin() as conn:
            conn.execute(tables.orders.insert().values(
                order_id=str(order.id), node_id=node_id, kind=kind,
                signed=signed.model_dump_json(), status="pending",
                created_at=order.issued_at, expires_at=order.expires_at))
        self.ledger.append(Kind.ORDER, node_id, {"order_id": str(order.id), "kind": kind,
                                                 "args": args, "expires_at": order.expires_at},
                           actor=actor)
        return signed

    def pending_orders(self, node_id: str) -> list[SignedOrder]:
        now = int(time.time())
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(tables.orders.c.signed).where(
                tables.orders.c.node_id == node_id, tables.orders.c.status == "pending",
                tables.orders.c.expires_at > now).order_by(tables.orders.c.created_at))
            return [SignedOrder.model_validate_json(r.signed) for r in rows]

    def acknowledge(self, node_id: str, order_id: str, signed: SignedAck) -> dict:
        ack = signed.ack
        node = self.node(node_id)
        if ack.node_id != node_id or str(ack.order_id) != order_id:
            raise Refused(403, "acknowledgment is for another node or order")
        try:
            verify_ack(signed, load_public_key(node["identity_key"] or ""))
        except (OrderRefused, SignatureError) as e:
            self.ledger.append(Kind.ACK, node_id, {"order_id": order_id, "refused": str(e)},
                               actor=f"node:{node_id}")
            raise Refused(403, f"acknowledgment refused: {e}") from None
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(tables.orders).where(
                tables.orders.c.order_id == order_id, tables.orders.c.node_id == node_id)).first()
            if row is None:
                raise Refused(404, f"no order {order_id} for node {node_id!r}")
            if row.status != "pending":
                raise Refused(409, f"order {order_id} was already acknowledged ({row.status})")
            conn.execute(tables.orders.update().where(tables.orders.c.order_id == order_id)
                         .values(status=ack.status, acked_at=ack.at, detail=ack.detail))
        self.ledger.append(Kind.ACK, node_id, {"order_id": order_id, "status": ack.status,
                                               "detail": ack.detail}, actor=f"node:{node_id}")
        if ack.status == "done" and row.kind in ("quarantine", "release"):
            target = "quarantined" if row.kind == "quarantine" else "trusted"
            current = self.node(node_id)["state"]
            if current != target:
                self._move(node_id, transition(current, target, f"{row.kind} order "
                                               f"{order_id} executed", operator=True),
                           "controller")
        return {"order_id": order_id, "status": ack.status}

    def orders(self, node_id: str | None = None) -> list[dict]:
        q = sa.select(tables.orders.c.order_id, tables.orders.c.node_id, tables.orders.c.kind,
                      tables.orders.c.status, tables.orders.c.created_at,
                      tables.orders.c.expires_at, tables.orders.c.detail)
        if node_id:
            q = q.where(tables.orders.c.node_id == node_id)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q.order_by(tables.orders.c.created_at))]

    # -- nodes --------------------------------------------------------------------------------
    def node(self, node_id: str) -> dict:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(tables.nodes).where(
                tables.nodes.c.node_id == node_id)).first()
        if row is None:
            raise Refused(404, f"no node {node_id!r}")
        return dict(row._mapping)

    def nodes(self) -> list[dict]:
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(
                sa.select(tables.nodes).order_by(tables.nodes.c.node_id))]

    # -- events -------------------------------------------------------------------------------
    def intake(self, node_id: str, batch: EventBatch) -> EventBatchAck:
        """Store a batch idempotently: an event id already stored for this node is counted
        as a duplicate, never stored twice (agents resend until acknowledged)."""
        if batch.node_id != node_id:
            raise Refused(403, f"batch is for node {batch.node_id!r} but the client "
                               f"certificate is {node_id!r}")
        node = self.node(node_id)
        if node["state"] in ("provisioning", "retired"):
            raise Refused(403, f"node {node_id!r} is {node['state']}: enroll first")
        insert = (postgresql.insert if self.engine.dialect.name == "postgresql"
                  else sqlite.insert)
        now = int(time.time())
        stored = 0
        new: list = []
        with self.engine.begin() as conn:
            for ev in batch.events:
                stmt = insert(tables.events).values(
                    node_id=node_id, event_id=str(ev.id), ts_ns=ev.ts_ns, kind=ev.kind,
                    severity=ev.severity, data=json.dumps(ev.data, sort_keys=True),
                    received_at=now).on_conflict_do_nothing(
                        index_elements=["node_id", "event_id"]
                    ).returning(tables.events.c.event_id)
                # RETURNING, not rowcount: psycopg reports -1 for a skipped conflict
                if conn.execute(stmt).fetchall():
                    stored += 1
                    new.append(ev)
            conn.execute(tables.nodes.update().where(tables.nodes.c.node_id == node_id)
                         .values(last_seen=now))
        for ev in new:
            for rule in incidents_for(ev):
                self._raise_incident(node_id, rule, ev)
        return EventBatchAck(stored=stored, duplicates=len(batch.events) - stored)

    def _raise_incident(self, node_id: str, rule: IncidentRule, ev: Event) -> None:
        order_id = None
        if rule.quarantine:
            try:
                order_id = str(self.create_order(node_id, "quarantine",
                                                 {"level": rule.quarantine,
                                                  "reason": f"incident rule {rule.name}"},
                                                 "controller:incidents").order.id)
            except Refused:
                order_id = None
        with self.engine.begin() as conn:
            conn.execute(tables.incidents.insert().values(
                node_id=node_id, rule=rule.name, severity=rule.severity, event_id=str(ev.id),
                summary=summarize(ev), created_at=int(time.time()), order_id=order_id))

    def incidents(self, node_id: str | None = None) -> list[dict]:
        q = sa.select(tables.incidents).order_by(tables.incidents.c.incident_id)
        if node_id:
            q = q.where(tables.incidents.c.node_id == node_id)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    def event_count(self, node_id: str | None = None) -> int:
        q = sa.select(sa.func.count()).select_from(tables.events)
        if node_id:
            q = q.where(tables.events.c.node_id == node_id)
        with self.engine.connect() as conn:
            return int(conn.execute(q).scalar_one())
