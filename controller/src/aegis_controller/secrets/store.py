"""Leased secrets in the controller's database: which node role a node's secrets come
from, each set of secrets a node fetched (its :class:`~aegis_protocol.secrets.SecretsReport`:
accessor, lease ids, logins — never a secret) and the state of its revocation.

Writes that go with another change (an acknowledgment, a state move, a quarantine order)
are functions taking the caller's transaction; the revocation they request is durable
before it is acted on, so a controller that stops or a Vault that is down delays it but
never drops it. Ledger records are of kind ``secret_lease`` with an ``event`` field.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy import Connection

from aegis_protocol.orders import OrderAck, SignedOrder
from aegis_protocol.secrets import NAME, SecretsReport

from .. import db, tables
from ..errors import Invalid
from ..ledger import Kind, Ledger, Recorder
from ..nodes import NodeState, NodeStore

_g = tables.secret_grants.c
_n = tables.nodes.c
_o = tables.orders.c

KIND = "fetch-secrets"
#: What replaces the wrapping token in a stored order once it is no longer needed.
SCRUBBED = "scrubbed"
#: A lease id the controller will revoke: ``<mount>/creds/<role>/<id>``, the id long
#: enough that it cannot be a prefix of other nodes' leases.
LEASE = re.compile(r"^[a-z0-9][a-z0-9_.-]*(/[a-z0-9][a-z0-9_.-]*){0,3}/creds/"
                   r"[a-z0-9][a-z0-9_.-]*/[A-Za-z0-9._-]{16,}$")
LOGIN = re.compile(r"^[A-Za-z0-9_.-]{1,63}$")


def now_ms() -> int:
    return int(time.time() * 1000)


def scrub_signed(signed_json: str) -> str:
    """A stored signed ``fetch-secrets`` order without its wrapping token."""
    doc = json.loads(signed_json)
    args = doc.get("order", {}).get("args", {})
    if "wrapped_secret_id" in args:
        args["wrapped_secret_id"] = SCRUBBED
    return json.dumps(doc)


def ledger_args(args: dict) -> dict:
    """An order's args as the ledger may show them: never a wrapping token."""
    return {k: (SCRUBBED if k == "wrapped_secret_id" else v) for k, v in args.items()}


def request_revocation(conn: Connection, node_id: str, reason: str,
                       now: int | None = None) -> int:
    """Ask (durably, in the caller's transaction) for every unrevoked grant of the node to
    be revoked; returns how many were newly asked for."""
    now = int(time.time()) if now is None else now
    return conn.execute(tables.secret_grants.update().where(
        _g.node_id == node_id, _g.revoked_at.is_(None), _g.revoke_requested_at.is_(None)
    ).values(revoke_requested_at=now, revoke_reason=reason[:500], next_attempt_at=0)).rowcount


def _problem(report: SecretsReport, approle: str) -> str | None:
    if report.role != approle:
        return f"report is for AppRole {report.role!r}, the order was for {approle!r}"
    bad = [x for x in report.leases if not LEASE.match(x)]
    if bad:
        return (f"lease id {bad[0][:80]!r} is not '<mount>/creds/<role>/<id>' with an id of "
                "16 or more characters")
    bad = [x for x in report.logins if not LOGIN.match(x)]
    if bad:
        return f"login {bad[0][:80]!r} is not a database login name"
    return None


def record_report(rec: Recorder, node_id: str, order: Any, ack: OrderAck) -> str | None:
    """A done ``fetch-secrets`` acknowledgment (``order``: its orders row), inside the
    acknowledgment's transaction: the grant stored and recorded, the node's older grants
    asked to be revoked (a refresh), this one too if the node is no longer trusted or a
    quarantine was ordered since. Returns what is wrong with the report (None: good)."""
    approle = str(SignedOrder.model_validate_json(order.signed).order.args.get("role", ""))
    try:
        report = SecretsReport.model_validate_json(ack.detail)
        problem = _problem(report, approle)
    except ValidationError as e:
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())) or "detail"
        problem = (f"the detail is not a SecretsReport ({e.error_count()} problem(s); "
                   f"{where}: {first.get('msg', 'invalid')})")
    if problem is not None:
        rec.append(Kind.SECRET_LEASE, node_id, {"event": "report_refused",
                                                "order_id": order.order_id, "reason": problem},
                   actor="controller:secrets")
        return problem
    now = int(time.time())
    request_revocation(rec.conn, node_id, f"replaced by the secrets of order {order.order_id}",
                       now)
    grant_id = rec.conn.execute(tables.secret_grants.insert().values(
        node_id=node_id, order_id=order.order_id, approle=report.role,
        accessor=report.accessor, leases=json.dumps(report.leases),
        logins=json.dumps(report.logins), expires_at=report.expires_at, fetched_at=now,
    ).returning(_g.grant_id)).scalar_one()
    rec.append(Kind.SECRET_LEASE, node_id, {
        "event": "fetched", "order_id": order.order_id, "grant_id": grant_id,
        "role": report.role, "accessor": report.accessor, "leases": report.leases,
        "logins": report.logins, "token_ttl": report.token_ttl,
        "expires_at": report.expires_at, "files": report.files}, actor=f"node:{node_id}")
    state = NodeStore.row_in(rec.conn, node_id)["state"]
    quarantined_since = rec.conn.execute(sa.select(_o.order_id).where(
        _o.node_id == node_id, _o.kind == "quarantine",
        _o.created_at >= order.created_at).limit(1)).first()
    if state != NodeState.TRUSTED or quarantined_since is not None:
        why = (f"fetched while the node is {state}" if state != NodeState.TRUSTED
               else "fetched after a quarantine was ordered")
        rec.conn.execute(tables.secret_grants.update().where(_g.grant_id == grant_id).values(
            revoke_requested_at=now, revoke_reason=why, next_attempt_at=0))
    return None


#: Back-off between fetch-secrets orders a node keeps failing: 5 s after the first failure,
#: doubling, at most 5 min (each order costs a secret_id and, often, a login).
FETCH_BACKOFF_FIRST, FETCH_BACKOFF_MAX, FETCH_BACKOFF_WINDOW = 5, 300, 8


def fetch_backoff(failed: int) -> int:
    """Seconds to wait after ``failed`` fetch-secrets orders failed in a row."""
    return min(FETCH_BACKOFF_MAX, FETCH_BACKOFF_FIRST * 2 ** max(0, failed - 1))


class SecretsStore:
    """Operators' view and the gate's and the revoker's reads and writes."""

    def __init__(self, nodes: NodeStore, ledger: Ledger) -> None:
        self.nodes = nodes
        self.ledger = ledger
        self.engine = nodes.engine

    # -- operators ------------------------------------------------------------------------
    def set_role(self, node_id: str, role: str | None, actor: str) -> None:
        """Assign node role ``role`` (None: clear it; the node's secrets are revoked)."""
        if role is not None and not re.match(NAME, role):
            raise Invalid(f"bad node role {role!r}: lower-case letters, digits, '.', '_', '-' "
                          "(the name in the vault role's vault_node_roles)")
        with self.ledger.recording() as rec:
            NodeStore.row_in(rec.conn, node_id)  # NotFound
            rec.conn.execute(tables.nodes.update().where(_n.node_id == node_id)
                             .values(secrets_role=role))
            body: dict[str, Any] = {"event": "role_assigned" if role else "role_cleared"}
            if role:
                body["role"] = role
            else:
                body["revocations"] = request_revocation(rec.conn, node_id,
                                                         "secrets role cleared")
            rec.append(Kind.SECRET_LEASE, node_id, body, actor=actor)
            self.nodes.notify_after(rec, node_id)

    def status(self, node_id: str) -> dict[str, Any]:
        node = self.nodes.get(node_id)
        with db.errors(self.engine), db.reader(self.engine) as conn:
            grants = [self._shown(r._mapping) for r in conn.execute(
                sa.select(tables.secret_grants).where(_g.node_id == node_id)
                .order_by(_g.grant_id))]
        return {"node_id": node_id, "state": node["state"], "role": node["secrets_role"],
                "grants": grants,
                "pending_revocations": sum(1 for g in grants if g["revoke_requested_at"]
                                           and not g["revoked_at"])}

    @staticmethod
    def _shown(row: Any) -> dict[str, Any]:
        out = dict(row)
        out["leases"], out["logins"] = json.loads(out["leases"]), json.loads(out["logins"])
        return out

    # -- the gate -------------------------------------------------------------------------
    def wanted_role(self, node_id: str, now: int | None = None) -> str | None:
        """The node role to fetch secrets for now (None: nothing to do): the node is trusted,
        has a role, no unexpired fetch-secrets order and no quarantine order is pending, and
        it holds no live grant or its newest one is past 2/3 of its lifetime, and it is not
        waiting out the back-off after failed fetch-secrets orders (:func:`fetch_backoff`)."""
        now = int(time.time()) if now is None else now
        with db.errors(self.engine), db.reader(self.engine) as conn:
            node = conn.execute(sa.select(_n.state, _n.secrets_role)
                                .where(_n.node_id == node_id)).first()
            if node is None or node.state != NodeState.TRUSTED or not node.secrets_role:
                return None
            if self.pending_order(conn, node_id, now) or self.quarantine_pending(conn, node_id):
                return None
            live = conn.execute(sa.select(_g.fetched_at, _g.expires_at).where(
                _g.node_id == node_id, _g.revoked_at.is_(None),
                _g.revoke_requested_at.is_(None)).order_by(_g.grant_id.desc())).first()
            failed, since = self.failed_fetches(conn, node_id)
        if live is not None and now < live.fetched_at + (live.expires_at - live.fetched_at) * 2 / 3:
            return None
        if failed and now < since + fetch_backoff(failed):
            return None  # the node could not use the last ones: no storm of secret_ids
        return str(node.secrets_role)

    @staticmethod
    def failed_fetches(conn: Connection, node_id: str) -> tuple[int, int]:
        """How many of the node's newest acknowledged fetch-secrets orders failed in a row
        (refused by the agent, or its report refused here), and when the last one was made
        (the controller's clock: the acknowledgment's time is the node's)."""
        rows = conn.execute(sa.select(_o.status, _o.created_at).where(
            _o.node_id == node_id, _o.kind == KIND, _o.status != "pending"
        ).order_by(_o.created_at.desc()).limit(FETCH_BACKOFF_WINDOW)).all()
        failed, since = 0, 0
        for r in rows:
            if r.status == "done":
                break
            failed += 1
            since = since or int(r.created_at)
        return failed, since

    @staticmethod
    def quarantine_pending(conn: Connection, node_id: str) -> bool:
        """A quarantine order and no done release order since: the node gets no secrets,
        whatever its state says. Any quarantine counts, not only an unacknowledged one: one
        the agent reported failed (or refused) leaves the node trusted at the controller,
        and such a node — or one that lies about it — must not be handed new secrets.

        A quarantine binds the machine enrolled when it was ordered: a machine that enrolled
        after it (a rebuild, or an operator's re-enrollment, each with new keys and a new
        one-time token) is judged on its own attestation."""
        last = conn.execute(sa.select(sa.func.max(_o.created_at)).where(
            _o.node_id == node_id, _o.kind == "quarantine")).scalar()
        if last is None:
            return False
        enrolled = conn.execute(sa.select(tables.nodes.c.enrolled_at).where(
            tables.nodes.c.node_id == node_id)).scalar()
        if enrolled is not None and enrolled > last:
            return False
        return conn.execute(sa.select(_o.order_id).where(
            _o.node_id == node_id, _o.kind == "release", _o.status == "done",
            _o.created_at >= last).limit(1)).first() is None

    @staticmethod
    def pending_order(conn: Connection, node_id: str, now: int) -> bool:
        return conn.execute(sa.select(_o.order_id).where(
            _o.node_id == node_id, _o.kind == KIND, _o.status == "pending",
            _o.expires_at > now).limit(1)).first() is not None

    def scrub_expired(self, now: int | None = None) -> int:
        """Drop the wrapping token from fetch-secrets orders that expired unacknowledged."""
        now = int(time.time()) if now is None else now
        expired = sa.select(_o.order_id, _o.signed).where(
            _o.kind == KIND, _o.status == "pending", _o.expires_at <= now, _o.detail.is_(None))
        with db.errors(self.engine), db.reader(self.engine) as conn:
            if conn.execute(expired.limit(1)).first() is None:
                return 0  # the usual case: no write lock taken every round
        with db.transaction(self.engine) as conn:
            rows = conn.execute(expired).all()
            for r in rows:  # still pending: an acknowledgment has not scrubbed it meanwhile
                conn.execute(tables.orders.update().where(
                    _o.order_id == r.order_id, _o.status == "pending").values(
                        signed=scrub_signed(r.signed),
                        detail="expired unacknowledged: wrapping token scrubbed"))
        return len(rows)

    # -- the revoker ----------------------------------------------------------------------
    def due(self, now: int | None = None) -> list[dict[str, Any]]:
        now = int(time.time()) if now is None else now
        with db.errors(self.engine), db.reader(self.engine) as conn:
            return [self._shown(r._mapping) for r in conn.execute(
                sa.select(tables.secret_grants).where(
                    _g.revoke_requested_at.is_not(None), _g.revoked_at.is_(None),
                    _g.next_attempt_at <= now).order_by(_g.grant_id))]

    def revocation_done(self, grant: dict[str, Any]) -> None:
        now = int(time.time())
        with self.ledger.recording() as rec:
            rec.conn.execute(tables.secret_grants.update().where(
                _g.grant_id == grant["grant_id"]).values(
                    revoked_at=now, attempts=grant["attempts"] + 1, last_outcome="revoked"))
            rec.append(Kind.SECRET_LEASE, grant["node_id"], {
                "event": "revoked", "grant_id": grant["grant_id"],
                "accessor": grant["accessor"], "reason": grant["revoke_reason"],
                "attempts": grant["attempts"] + 1}, actor="controller:secrets")

    def revocation_failed(self, grant: dict[str, Any], reason: str, retry_in: int) -> None:
        now = int(time.time())
        with self.ledger.recording() as rec:
            rec.conn.execute(tables.secret_grants.update().where(
                _g.grant_id == grant["grant_id"]).values(
                    attempts=grant["attempts"] + 1, next_attempt_at=now + retry_in,
                    last_outcome=f"failed: {reason}"[:1000]))
            rec.append(Kind.SECRET_LEASE, grant["node_id"], {
                "event": "revocation_failed", "grant_id": grant["grant_id"],
                "accessor": grant["accessor"], "reason": reason,
                "attempt": grant["attempts"] + 1, "retry_in_s": retry_in},
                actor="controller:secrets")

    def revocation_refused(self, grant: dict[str, Any], reason: str) -> None:
        """The grant's accessor is another node's: closed without revoking anything."""
        now = int(time.time())
        with self.ledger.recording() as rec:
            rec.conn.execute(tables.secret_grants.update().where(
                _g.grant_id == grant["grant_id"]).values(
                    revoked_at=now, attempts=grant["attempts"] + 1,
                    last_outcome=f"refused: {reason}"[:1000]))
            rec.append(Kind.SECRET_LEASE, grant["node_id"], {
                "event": "revocation_refused", "grant_id": grant["grant_id"],
                "accessor": grant["accessor"], "reason": reason}, actor="controller:secrets")

    def step(self, grant: dict[str, Any], step: dict[str, Any]) -> None:
        """One revocation step on the ledger (as it ends)."""
        self.ledger.append(Kind.SECRET_LEASE, grant["node_id"], {
            "event": "revocation_step", "grant_id": grant["grant_id"],
            "accessor": grant["accessor"], **step}, actor="controller:secrets")
