"""Enrollment: one-time bootstrap tokens, enrolling a node with one, and its client
certificates (only the newest is accepted, and the one a rotation replaced until the new
one is first used; a node renews with a new key, asking with its identity key). Every step
and every refusal is recorded on the ledger, in the transaction that makes the change."""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable

import sqlalchemy as sa
from cryptography import x509

from aegis_protocol.enrollment import (
    EnrollRequest,
    EnrollResponse,
    RenewRequest,
    RenewResponse,
    csr_key_digest,
)
from aegis_protocol.signing import SignatureError, load_public_key, verify

from . import db, tables
from .enrollment_limits import NoiseCounter, SourceLimiter
from .errors import Conflict, Forbidden, Invalid, TooMany, Unauthenticated
from .ledger import Kind, Ledger
from .nodes import NO_CERTIFICATE, NodeState, NodeStore
from .pki import CertificateAuthority, PkiError, cert_pem, check_csr
from .trust import TransitionRefused, after_enrollment, transition
from .vault_wrap import Wrapped

_t = tables.tokens.c
_r = tables.cert_renewals.c


UNKNOWN_TOKEN = "unknown bootstrap token"  # noqa: S105  (a refusal, not a secret)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Enrollment:
    """Tokens, enrollment and certificates; ``order_key`` is handed to enrolling nodes."""

    def __init__(self, nodes: NodeStore, ledger: Ledger, ca: CertificateAuthority,
                 order_key: str) -> None:
        self.nodes = nodes
        self.ledger = ledger
        self.ca = ca
        self.order_key = order_key
        self.limiter = SourceLimiter()
        self.noise = NoiseCounter()

    def issue_token(self, node_id: str, ttl: int = 600, actor: str = "operator",
                    wrap: Callable[[str], Wrapped] | None = None) -> str:
        """A one-time bootstrap token for ``node_id`` (only its hash is stored).

        With ``wrap`` (a Vault-compatible server's response wrapping), the token is
        wrapped before anything is stored and the wrapping token is returned instead: a
        failed wrap leaves no usable token behind."""
        if not 10 <= ttl <= 86400:
            raise Invalid("ttl must be between 10 and 86400 seconds")
        token = secrets.token_urlsafe(32)
        wrapped = wrap(token) if wrap is not None else None
        now = int(time.time())
        issued: dict[str, object] = {"event": "token_issued", "expires_at": now + ttl}
        if wrapped is not None:
            issued.update(wrapped=True, wrap_accessor=wrapped.accessor)
        with self.ledger.recording() as rec:
            rec.conn.execute(tables.tokens.insert().values(
                token_hash=token_hash(token), node_id=node_id, issued_at=now,
                expires_at=now + ttl))
            self.nodes.create_if_missing(rec.conn, node_id, "bootstrap token issued")
            rec.append(Kind.ENROLLMENT, node_id, issued, actor=actor)
        return wrapped.token if wrapped is not None else token

    @staticmethod
    def _spend_token(conn: sa.Connection, req: EnrollRequest, now: int) -> str | None:
        """Mark the token used (in the caller's write transaction); returns what is wrong
        with it (None: it was good)."""
        digest = token_hash(req.token)
        row = conn.execute(sa.select(tables.tokens).where(_t.token_hash == digest)).first()
        if row is None:
            return UNKNOWN_TOKEN
        if row.node_id != req.node_id:
            return "bootstrap token was issued for another node"
        if row.used_at is not None:
            return "bootstrap token was already used"
        if row.expires_at <= now:
            return f"bootstrap token expired {now - row.expires_at} s ago"
        try:  # checked before the token is spent: the operator may still allow it
            after_enrollment(conn.execute(sa.select(tables.nodes.c.state).where(
                tables.nodes.c.node_id == req.node_id)).scalar() or NodeState.PROVISIONING)
        except TransitionRefused as e:
            return str(e)
        # the WHERE makes a concurrent second use lose the race (PostgreSQL)
        used = conn.execute(tables.tokens.update().where(
            _t.token_hash == digest, _t.used_at.is_(None)).values(used_at=now)).rowcount
        return None if used == 1 else "bootstrap token was already used"

    def enroll(self, req: EnrollRequest, peer: str) -> EnrollResponse:
        """Spend the token, certify the node and record it, all in one transaction (a
        failure leaves the token unspent and nothing recorded); a refusal is recorded."""
        now = int(time.time())
        actor = f"node:{req.node_id}"
        source = peer.rsplit(":", 1)[0]
        wait = self.limiter.allow(source)
        if wait:
            raise TooMany(f"too many enrollment attempts from {source}: retry in "
                          f"{wait:.0f} s", wait)
        try:  # before the token is spent: a corrected retry may use it
            check_csr(req.csr_pem, req.node_id)
            load_public_key(req.identity_key)
        except PkiError as e:
            raise Invalid(f"csr_pem: {e}") from None
        except SignatureError as e:
            raise Invalid(f"identity_key: {e}") from None
        with self.ledger.recording() as rec:
            problem = self._spend_token(rec.conn, req, now)
            if problem == UNKNOWN_TOKEN:  # noise: counted, one record per window
                done = self.noise.add(source)
                if done is not None:
                    rec.append(Kind.TOKEN_REFUSED, "", done, actor="controller")
            elif problem is not None:
                rec.append(Kind.TOKEN_REFUSED, req.node_id,
                           {"reason": problem, "peer": peer,
                            "token_sha256": token_hash(req.token)[:16]}, actor=actor)
            else:
                cert = self.ca.sign_csr(req.csr_pem, req.node_id)
                serial = format(cert.serial_number, "x")
                self.nodes.record_enrollment(rec, req.node_id, serial=serial,
                                             identity_key=req.identity_key, now=now,
                                             actor=actor)
                rec.append(Kind.ENROLLMENT, req.node_id,
                           {"event": "enrolled", "cert_serial": serial, "peer": peer},
                           actor=actor)
        if problem is not None:  # raised after the commit: the refusal stays recorded
            raise Forbidden(f"enrollment refused: {problem}; ask the operator for a new "
                            "token (aegis-controller token issue NODE)")
        return EnrollResponse(node_id=req.node_id, certificate_pem=cert_pem(cert).decode(),
                              ca_pem=self.ca.cert_path.read_text(), order_key=self.order_key,
                              not_after=int(cert.not_valid_after_utc.timestamp()))

    def flush_noise(self) -> None:
        """Record the unknown-token refusals counted so far (at shutdown)."""
        done = self.noise.flush()
        if done is not None:
            self.ledger.append(Kind.TOKEN_REFUSED, "", done, actor="controller")

    def allow_reenrollment(self, node_id: str, reason: str, actor: str) -> None:
        """An operator lets a suspect, quarantined or retired node enroll again: it goes
        back to ``provisioning`` (recorded, with the operator's reason); its next
        enrollment with a new token makes it ``enrolled``."""
        if not reason.strip():
            raise Invalid("give a --reason: it is recorded on the ledger")
        state = self.nodes.get(node_id)["state"]
        try:
            t = transition(state, NodeState.PROVISIONING, f"re-enrollment allowed: {reason}",
                           operator=True)
        except TransitionRefused as e:
            raise Conflict(f"{e}: only a suspect, quarantined or retired node needs this; "
                           "others enroll again with a new token") from None
        self.nodes.move(node_id, t, actor)

    def current_certificate(self, node_id: str, serial: int | None) -> None:
        """Only the node's newest certificate is accepted, and, until that one is first
        used, the one it replaced by a rotation (the rotation's reply may have been lost);
        a certificate replaced by a re-enrollment or an older rotation is refused although
        it has not expired. The first use of the new certificate ends the grace."""
        with db.errors(self.nodes.engine), db.reader(self.nodes.engine) as conn:
            row = conn.execute(
                sa.select(tables.nodes.c.cert_serial, _r.previous_serial, _r.new_serial)
                .select_from(tables.nodes.outerjoin(tables.cert_renewals,
                                                    _r.node_id == tables.nodes.c.node_id))
                .where(tables.nodes.c.node_id == node_id)).first()
        current = row.cert_serial if row is not None else None
        pending = row is not None and row.new_serial is not None and row.new_serial == current
        if serial is not None and current and int(current, 16) == serial:
            if pending:  # the new certificate's first use: the previous one is done
                with db.transaction(self.nodes.engine) as conn:
                    conn.execute(tables.cert_renewals.delete().where(
                        _r.node_id == node_id, _r.new_serial == current))
            return
        if serial is not None and pending and int(row.previous_serial, 16) == serial:
            return
        raise Unauthenticated(f"this certificate of {node_id!r} was replaced (rotated or "
                              "re-enrolled); use the newest one")

    def renew_certificate(self, node_id: str, req: RenewRequest) -> RenewResponse:
        """A new certificate for the key in ``req``'s CSR, if the node's enrolled identity
        key signed the request. Asked again for the same key before the new certificate
        was used (the reply was lost), the same certificate is returned."""
        node = self.nodes.get(node_id)
        if node["state"] in NO_CERTIFICATE:
            raise Conflict(f"node {node_id!r} is {node['state']}: no new certificate")
        try:
            verify(load_public_key(node["identity_key"] or ""), req.claim(node_id),
                   req.signature)
        except (SignatureError, ValueError) as e:
            self.ledger.append(Kind.ENROLLMENT, node_id,
                               {"event": "certificate_renewal_refused",
                                "reason": f"identity signature: {e}"}, actor=f"node:{node_id}")
            raise Forbidden("certificate renewal refused: the request must be signed by the "
                            "node's enrolled identity key") from None
        try:
            key_digest = csr_key_digest(req.csr_pem)
        except ValueError as e:
            raise Invalid(f"csr_pem: not a PEM certificate request ({e})") from None
        with db.errors(self.nodes.engine), db.reader(self.nodes.engine) as conn:
            pending = conn.execute(sa.select(tables.cert_renewals).where(
                _r.node_id == node_id, _r.new_serial == node["cert_serial"])).first()
        if pending is not None and pending.key_sha256 == key_digest:
            cert = x509.load_pem_x509_certificate(pending.certificate_pem.encode())
            return RenewResponse(certificate_pem=pending.certificate_pem,
                                 not_after=int(cert.not_valid_after_utc.timestamp()))
        try:
            cert = self.ca.sign_csr(req.csr_pem, node_id)
        except PkiError as e:
            raise Invalid(f"csr_pem: {e}") from None
        serial = format(cert.serial_number, "x")
        # the certificate the node last used stays accepted until the new one is used
        previous = pending.previous_serial if pending is not None else node["cert_serial"]
        pem = cert_pem(cert).decode()
        with self.ledger.recording() as rec:
            self.nodes.update(node_id, rec.conn, cert_serial=serial)
            rec.conn.execute(tables.cert_renewals.delete().where(_r.node_id == node_id))
            rec.conn.execute(tables.cert_renewals.insert().values(
                node_id=node_id, previous_serial=previous, new_serial=serial,
                key_sha256=key_digest, certificate_pem=pem, issued_at=int(time.time())))
            rec.append(Kind.ENROLLMENT, node_id,
                       {"event": "certificate_rotated", "cert_serial": serial,
                        "previous_serial": node["cert_serial"]}, actor=f"node:{node_id}")
        return RenewResponse(certificate_pem=pem,
                             not_after=int(cert.not_valid_after_utc.timestamp()))
