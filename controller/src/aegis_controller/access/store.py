"""Just-in-time access requests: a verified user asks for a service of the access policy;
the policy's rule decides (refused, ``pending`` until enough different approvers agree, or
``granted`` at once); a grant is a signed ``grant`` order to each trusted node the service
selects, with the edge ``USER_IP -> NODE_IP proto/port``, ``ttl`` = the granted time and
``idle`` = :data:`IDLE` seconds; a revoke is a signed ``revoke`` order per edge.

A service of kind ``ssh`` also needs the user's SSH public key with the request: at the
grant the SSH CA (:mod:`.ssh_ca`) signs it for the user's principal (their name), valid
until the grant ends, and the request carries the certificate (its serial and key id on
the ledger). Ended early (revoke, idle, a node leaving trusted), each node of the ended
edges gets a signed ``revoke-ssh-cert`` order: its agent adds the certificate to sshd's
KRL, as signed SSH certificates cannot be revoked at the CA.

Every step (request, approval, deny, grant, revoke, expiry, a node losing trust) is one
``access_grant`` ledger record with the user's identity (sub, name, groups), written in the
same transaction as the state it describes. A refusal writes nothing.
"""

from __future__ import annotations

import ipaddress
import json
import time
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection, Engine

from aegis_protocol.access import AccessRequest, AccessState, SshCertificate, ssh_key_id
from aegis_protocol.events import Event
from aegis_protocol.orders import MAX_LIFETIME

from .. import db, document_versions, tables
from ..errors import Conflict, Forbidden, Invalid, NotFound, Unavailable
from ..ledger import Kind, Ledger, Recorder
from ..nodes import NOT_LIVE, NodeState, NodeStore
from ..orders import Orders
from .identity import User
from .policy import BUILTIN_LABEL_KEYS, Policy, PolicyError, load, parse
from .sessions import SessionCommands
from .ssh_ca import PRINCIPAL, SshCa, SshCaError, check_public_key

#: Seconds without traffic after which the agent removes a granted edge.
IDLE = 60
#: Seconds a request may wait for its approvers before it expires.
PENDING_MAX = 3600
#: An edge the agent drops this close to its end expired (not idle).
EXPIRY_SLACK = 5
_r = tables.access_requests.c
_e = tables.access_edges.c
_p = tables.access_policies.c
_n = tables.nodes.c
ACTOR = "controller:access"


def _subject(request_id: str) -> str:
    return f"access:{request_id}"


class Access:
    def __init__(self, engine: Engine, ledger: Ledger, nodes: NodeStore,
                 orders: Orders) -> None:
        self.engine = engine
        self.ledger = ledger
        self.sessions = SessionCommands(ledger)
        self.nodes = nodes
        self.orders = orders
        #: signs the certificates of ssh grants (``serve --ssh-ca-mount``); None: off
        self.ssh_ca: SshCa | None = None

    # -- the policy and the nodes' labels (operators) -------------------------------------
    def label_keys(self, conn: Connection) -> set[str]:
        keys = set(BUILTIN_LABEL_KEYS)
        for (labels,) in conn.execute(sa.select(_n.labels).where(_n.labels.is_not(None))):
            keys.update(json.loads(labels))
        return keys

    def set_policy(self, text: str, actor: str) -> dict[str, Any]:
        """Validate ``text`` and make it the policy in force; a refusal changes nothing."""
        with self.ledger.recording() as rec:
            try:
                policy = load(text, self.label_keys(rec.conn))
            except PolicyError as e:
                raise Invalid(f"access policy: {e}") from None
            digest = policy.digest()
            version = document_versions.add(rec.conn, tables.access_policies,
                                            policy.document(), digest, actor)
            rec.append(Kind.ACCESS_GRANT, "access-policy", {
                "event": "policy_set", "version": version, "digest": digest,
                "services": sorted(policy.services), "rules": len(policy.rules)}, actor=actor)
        return {"version": version, "digest": digest}

    def policy(self, conn: Connection) -> tuple[int, Policy]:
        version, doc = document_versions.newest(conn, tables.access_policies,
                                                "access policy",
                                                "aegis-controller access policy set FILE")
        # validated when set: its label keys stand
        keys = {k for svc in doc.get("services", {}).values() for k in svc["nodes"]}
        return version, parse(doc, frozenset(keys))

    def current_policy(self) -> dict[str, Any]:
        with db.errors(self.engine), db.reader(self.engine) as conn:
            version, policy = self.policy(conn)
        return {"version": version, "digest": policy.digest(), **policy.document()}

    def set_node(self, node_id: str, labels: dict[str, str], address: str | None,
                 actor: str) -> dict[str, Any]:
        """Set a node's labels (replacing them) and, if given, its address."""
        for key, value in labels.items():
            if not key or len(key) > 63 or not value or len(value) > 63:
                raise Invalid(f"label {key!r}={value!r}: key and value of 1 to 63 characters")
        values: dict[str, Any] = {"labels": json.dumps(labels, sort_keys=True)}
        if address is not None:
            try:
                values["address"] = str(ipaddress.IPv4Address(address))
            except ValueError:
                raise Invalid(f"--address {address!r}: give the node's IPv4 address") from None
        with self.ledger.recording() as rec:
            NodeStore.row_in(rec.conn, node_id)  # NotFound
            rec.conn.execute(tables.nodes.update().where(_n.node_id == node_id)
                             .values(**values))
            rec.append(Kind.ACCESS_GRANT, node_id, {"event": "node_labels", "labels": labels,
                                                     "address": values.get("address")},
                       actor=actor)
            self.nodes.changed_in(rec, node_id, "labels or address set")
        return {"node_id": node_id, "labels": labels, "address": values.get("address")}

    # -- users ----------------------------------------------------------------------------
    def request(self, user: User, req: AccessRequest, source: str) -> AccessState:
        """Decide ``req`` by the policy: refused (Forbidden, with the reason), pending, or
        granted (orders queued)."""
        try:
            if ipaddress.ip_address(source).version != 4:
                raise ValueError
        except ValueError:
            raise Invalid(f"source address {source!r}: access edges are IPv4; connect to "
                          "the controller over IPv4") from None
        now = int(time.time())
        request_id = str(uuid.uuid4())
        with self.ledger.recording() as rec:
            version, policy = self.policy(rec.conn)
            try:
                rule = policy.decide(req.service, user.groups)
            except PolicyError as e:
                raise Forbidden(str(e)) from None
            ttl = int(req.ttl)
            if ttl > rule.max_ttl:
                raise Invalid(f"ttl: {ttl} s is over the maximum of rule {rule.name!r} "
                              f"({rule.max_ttl} s)")
            terms = rule.terms(policy)
            ssh_key = self._ssh_key(user, req, terms)
            if not self._targets(rec.conn, terms, req.node):
                raise Conflict(f"service {req.service!r}: no trusted node with an address "
                               f"matches {terms['nodes']}"
                               + (f" and is {req.node!r}" if req.node else "") + " now")
            rec.conn.execute(tables.access_requests.insert().values(
                request_id=request_id, service=req.service, rule=rule.name,
                policy_version=version, terms=json.dumps(terms), sub=user.sub,
                user_name=user.name, groups=json.dumps(list(user.groups)), source=source,
                node_filter=req.node, ttl=ttl, reason=req.reason, status="pending",
                approvals="[]", created_at=now, ssh_public_key=ssh_key))
            rec.append(Kind.ACCESS_GRANT, _subject(request_id), {
                "event": "request", "user": user.ledger(), "service": req.service,
                "rule": rule.name, "policy_version": version, "source": source, "ttl": ttl,
                "reason": req.reason, "node": req.node,
                "approvals_needed": rule.approvals,
                **({"ssh_public_key": ssh_key} if ssh_key else {})}, actor=user.actor)
            if rule.approvals == 0:
                self._grant_in(rec, request_id, now)
        return self.get(user, request_id)

    def approve(self, user: User, request_id: str, reason: str = "") -> AccessState:
        now = int(time.time())
        with self.ledger.recording() as rec:
            row, terms = self._pending(rec.conn, request_id)
            self._check_approver(user, row, terms, "approve")
            approvals = json.loads(row.approvals)
            if any(a["sub"] == user.sub for a in approvals):
                raise Conflict(f"request {request_id}: you approved it already; it needs "
                               f"{terms['approvals']} different approvers")
            approvals.append({"sub": user.sub, "name": user.name, "at": now})
            rec.conn.execute(tables.access_requests.update()
                             .where(_r.request_id == request_id)
                             .values(approvals=json.dumps(approvals)))
            rec.append(Kind.ACCESS_GRANT, _subject(request_id), {
                "event": "approval", "user": user.ledger(), "reason": reason,
                "approvals": len(approvals), "approvals_needed": terms["approvals"]},
                actor=user.actor)
            if len(approvals) >= terms["approvals"]:
                self._grant_in(rec, request_id, now)
        return self.get(user, request_id)

    def deny(self, user: User, request_id: str, reason: str = "") -> AccessState:
        now = int(time.time())
        with self.ledger.recording() as rec:
            row, terms = self._pending(rec.conn, request_id)
            self._check_approver(user, row, terms, "deny")
            self._end(rec.conn, request_id, "denied", now, f"denied by {user.name}: {reason}")
            rec.append(Kind.ACCESS_GRANT, _subject(request_id), {
                "event": "deny", "user": user.ledger(), "reason": reason}, actor=user.actor)
        return self.get(user, request_id)

    def revoke(self, user: User, request_id: str, reason: str = "") -> AccessState:
        """End a pending or granted request (its requester or one of its approvers)."""
        now = int(time.time())
        with self.ledger.recording() as rec:
            row = self._row(rec.conn, request_id, lock=True)
            terms = json.loads(row.terms)
            if row.sub != user.sub and not self._is_approver(user, terms):
                raise Forbidden(f"request {request_id}: only its requester or an approver "
                                f"(roles {', '.join(terms['approver_roles']) or 'none'}) "
                                "may revoke it")
            if row.status not in ("pending", "granted"):
                raise Conflict(f"request {request_id} is {row.status} already")
            why = f"revoked by {user.name}" + (f": {reason}" if reason else "")
            orders = self._revoke_edges(rec, request_id, None, user.actor, why)
            self._end(rec.conn, request_id, "revoked", now, why)
            rec.append(Kind.ACCESS_GRANT, _subject(request_id), {
                "event": "revoke", "user": user.ledger(), "reason": reason,
                "requester": row.sub, **orders}, actor=user.actor)
        return self.get(user, request_id)

    def get(self, user: User | None, request_id: str) -> AccessState:
        """The request as ``user`` may see it (its requester or an approver); ``None``:
        an operator."""
        with db.errors(self.engine), db.reader(self.engine) as conn:
            row = self._row(conn, request_id)
            if user is not None and row.sub != user.sub and \
                    not self._is_approver(user, json.loads(row.terms)):
                raise NotFound(f"no access request {request_id} of yours or for you to "
                               "approve")
            return self._state(conn, row)

    def visible(self, user: User | None) -> list[AccessState]:
        """The requests ``user`` made or may approve (``None``: all), newest first."""
        with db.errors(self.engine), db.reader(self.engine) as conn:
            rows = conn.execute(sa.select(tables.access_requests)
                                .order_by(_r.created_at.desc()).limit(500)).all()
            return [self._state(conn, r) for r in rows if user is None or r.sub == user.sub
                    or self._is_approver(user, json.loads(r.terms))]

    # -- time and trust -------------------------------------------------------------------
    def expire_due(self, now: int | None = None) -> list[str]:
        """Mark granted requests past their end expired (the agents drop the edges by
        themselves at the ttl), and pending requests nobody decided on within
        :data:`PENDING_MAX` seconds; returns their ids."""
        now = int(time.time()) if now is None else now
        due = sa.or_(sa.and_(_r.status == "granted", _r.expires_at <= now),
                     sa.and_(_r.status == "pending", _r.created_at <= now - PENDING_MAX))
        done: list[str] = []
        with db.errors(self.engine), db.reader(self.engine) as conn:  # most often: none
            if conn.execute(sa.select(_r.request_id).where(due).limit(1)).first() is None:
                return done
        with self.ledger.recording() as rec:
            for row in rec.conn.execute(sa.select(tables.access_requests).where(due)).all():
                if row.status == "granted":
                    rec.conn.execute(tables.access_edges.update().where(
                        _e.request_id == row.request_id, _e.status == "active"
                    ).values(status="expired"))
                    why = "the granted time ended"
                else:
                    why = f"not approved within {PENDING_MAX} s"
                self._end(rec.conn, row.request_id, "expired", now, why)
                rec.append(Kind.ACCESS_GRANT, _subject(row.request_id), {
                    "event": "expiry", "user": _user_of(row).ledger(), "was": row.status,
                    "reason": why, "expires_at": row.expires_at}, actor=ACTOR)
                done.append(row.request_id)
        return done

    def node_left_trust_in(self, rec: Recorder, node_id: str, reason: str) -> None:
        """Revoke every active edge on ``node_id`` inside the transaction that moves it out
        of trusted (hooked on :class:`~..nodes.NodeStore`)."""
        ids = [r.request_id for r in rec.conn.execute(sa.select(_e.request_id).where(
            _e.node_id == node_id, _e.status == "active"))]
        now = int(time.time())
        for request_id in ids:
            row = self._row(rec.conn, request_id)
            why = f"node {node_id!r} left trusted: {reason}"
            orders = self._revoke_edges(rec, request_id, node_id, ACTOR, why)
            rec.append(Kind.ACCESS_GRANT, _subject(request_id), {
                "event": "revoke", "user": _user_of(row).ledger(), "node": node_id,
                "reason": why, **orders}, actor=ACTOR)
            left = rec.conn.execute(sa.select(sa.func.count()).where(
                _e.request_id == request_id, _e.status == "active")).scalar()
            if not left and row.status == "granted":
                self._end(rec.conn, request_id, "revoked", now,
                          f"node {node_id} left trusted: {reason}")

    def agent_event(self, node_id: str, event: Event) -> None:
        """An agent's ``edges_expired`` event (kind ``agent``): the granted edges it names
        that are still active before their end were dropped for :data:`IDLE` seconds
        without traffic — recorded (``idle_revoke``), and the request ends when none of
        its edges is left. An ``edge_used`` event: the edge's first packet (once)."""
        if event.kind != "agent":
            return
        if event.data.get("what") == "edge_used":
            self._first_packet(node_id, event)
            return
        if event.data.get("what") != "edges_expired":
            return
        gone = {e.strip() for e in str(event.data.get("edges", "")).split(",") if e.strip()}
        if not gone:
            return
        now = int(time.time())
        with self.ledger.recording() as rec:
            rows = rec.conn.execute(
                sa.select(tables.access_edges, _r.expires_at, _r.status.label("req_status"))
                .join(tables.access_requests, _r.request_id == _e.request_id)
                .where(_e.node_id == node_id, _e.status == "active",
                       _e.edge.in_(sorted(gone)))).all()
            for edge in rows:
                if edge.expires_at is not None and now >= edge.expires_at - EXPIRY_SLACK:
                    continue  # its time ended: expire_due records it
                row = self._row(rec.conn, edge.request_id)
                krl = self._krl_order(rec, row, node_id, f"node:{node_id}",
                                      f"idle: no traffic for {IDLE} s", now)
                rec.conn.execute(tables.access_edges.update().where(
                    _e.request_id == edge.request_id, _e.node_id == node_id
                ).values(status="idle", krl_order=krl))
                rec.append(Kind.ACCESS_GRANT, _subject(edge.request_id), {
                    "event": "idle_revoke", "user": _user_of(row).ledger(), "node": node_id,
                    "edge": edge.edge, "idle": IDLE, "agent_event": str(event.id),
                    "at_ns": event.ts_ns, **({"krl_orders": [krl]} if krl else {})},
                    actor=f"node:{node_id}")
                left = rec.conn.execute(sa.select(sa.func.count()).where(
                    _e.request_id == edge.request_id, _e.status == "active")).scalar()
                if not left and row.status == "granted":
                    self._end(rec.conn, edge.request_id, "revoked", now,
                              f"idle: no traffic for {IDLE} s (the agent of {node_id} "
                              "dropped the edge)")

    def packets_seen(self, node_id: str, seen: dict[str, int]) -> None:
        """The last packet on each of the node's active granted edges, from its heartbeat
        (edge -> wall-clock ns): kept when newer than the one held (not on the ledger: the
        first packet and the idle revoke are the steps)."""
        with db.errors(self.engine), db.transaction(self.engine) as conn:
            for edge, ns in seen.items():
                conn.execute(tables.access_edges.update().where(
                    _e.node_id == node_id, _e.edge == edge, _e.status == "active",
                    sa.or_(_e.last_packet_ns.is_(None), _e.last_packet_ns < ns)
                ).values(last_packet_ns=ns))

    def _first_packet(self, node_id: str, event: Event) -> None:
        """The first packet on a granted edge, as the node's agent saw it (by
        ``seen_by_ns``; its sweep runs every few seconds): recorded once per edge
        (``first_packet``), with the user's identity; a report for an edge that is not an
        active grant, or one already recorded (an agent that restarted reports again), is
        passed over."""
        edge = str(event.data.get("edge", ""))
        seen = event.data.get("seen_by_ns")
        seen_ns = seen if isinstance(seen, int) and seen > 0 else event.ts_ns
        with self.ledger.recording() as rec:
            rows = rec.conn.execute(sa.select(tables.access_edges).where(
                _e.node_id == node_id, _e.edge == edge, _e.status == "active",
                _e.first_packet_ns.is_(None))).all()
            for row in rows:
                request = self._row(rec.conn, row.request_id)
                rec.conn.execute(tables.access_edges.update().where(
                    _e.request_id == row.request_id, _e.node_id == node_id
                ).values(first_packet_ns=seen_ns))
                rec.append(Kind.ACCESS_GRANT, _subject(row.request_id), {
                    "event": "first_packet", "user": _user_of(request).ledger(),
                    "node": node_id, "edge": edge, "seen_by_ns": seen_ns,
                    "agent_event": str(event.id)}, actor=f"node:{node_id}")

    # -- internals ------------------------------------------------------------------------
    @staticmethod
    def _row(conn: Connection, request_id: str, lock: bool = False) -> Any:
        q = sa.select(tables.access_requests).where(_r.request_id == request_id)
        row = conn.execute(q.with_for_update() if lock else q).first()
        if row is None:
            raise NotFound(f"no access request {request_id}")
        return row

    def _pending(self, conn: Connection, request_id: str) -> tuple[Any, dict[str, Any]]:
        row = self._row(conn, request_id, lock=True)
        if row.status != "pending":
            raise Conflict(f"request {request_id} is {row.status}, not pending")
        return row, json.loads(row.terms)

    @staticmethod
    def _is_approver(user: User, terms: dict[str, Any]) -> bool:
        return bool(set(user.groups) & set(terms["approver_groups"]))

    def _check_approver(self, user: User, row: Any, terms: dict[str, Any], verb: str) -> None:
        if row.sub == user.sub:
            raise Forbidden(f"request {row.request_id}: you cannot {verb} your own request; "
                            "another approver must")
        if not self._is_approver(user, terms):
            raise Forbidden(f"request {row.request_id}: only members of the approver roles "
                            f"({', '.join(terms['approver_roles']) or 'none'}) may {verb} it")

    @staticmethod
    def _targets(conn: Connection, terms: dict[str, Any], only: str | None
                 ) -> list[tuple[str, str]]:
        """(node_id, address) of the trusted nodes the service selects now."""
        rows = conn.execute(sa.select(_n.node_id, _n.address, _n.labels).where(
            _n.state == NodeState.TRUSTED, _n.address.is_not(None), _n.labels.is_not(None)
        ).order_by(_n.node_id))
        want = terms["nodes"]
        return [(r.node_id, r.address) for r in rows
                if (only is None or r.node_id == only)
                and all(json.loads(r.labels).get(k) == v for k, v in want.items())]

    def _grant_in(self, rec: Recorder, request_id: str, now: int) -> None:
        row = self._row(rec.conn, request_id)
        terms = json.loads(row.terms)
        targets = self._targets(rec.conn, terms, row.node_filter)
        if not targets:
            raise Conflict(f"service {row.service!r}: no trusted node with an address "
                           f"matches {terms['nodes']} now; nothing granted")
        port = f"{terms['proto']}/{terms['port']}"
        edges = []
        for node_id, address in targets:
            edge = f"{row.source} -> {address} {port}"
            signed = self.orders.create_in(
                rec, node_id, "grant", {"edge": edge, "ttl": row.ttl, "idle": IDLE},
                ACTOR, lifetime=min(row.ttl, MAX_LIFETIME))
            rec.conn.execute(tables.access_edges.insert().values(
                request_id=request_id, node_id=node_id, edge=edge, status="active",
                grant_order=str(signed.order.id)))
            edges.append({"node": node_id, "edge": edge, "order_id": str(signed.order.id)})
        values: dict[str, Any] = {"status": "granted", "granted_at": now,
                                  "expires_at": now + row.ttl}
        ssh: dict[str, Any] = {}
        if terms.get("kind") == "ssh":
            cert = self._sign(row, now + row.ttl)
            values.update(ssh_certificate=cert.certificate, ssh_serial=cert.serial,
                          ssh_key_id=cert.key_id, ssh_principal=cert.principal,
                          ssh_valid_after=cert.valid_after, ssh_valid_before=cert.valid_before)
            ssh = {"ssh_certificate": cert.ledger()}
        rec.conn.execute(tables.access_requests.update().where(_r.request_id == request_id)
                         .values(**values))
        rec.append(Kind.ACCESS_GRANT, _subject(request_id), {
            "event": "grant", "user": _user_of(row).ledger(), "service": row.service,
            "ttl": row.ttl, "idle": IDLE, "expires_at": now + row.ttl, "edges": edges,
            "approvers": [a["sub"] for a in json.loads(row.approvals)], **ssh}, actor=ACTOR)

    def _ssh_key(self, user: User, req: AccessRequest, terms: dict[str, Any]) -> str | None:
        """The request's SSH public key, normalised: required for (and only for) a service
        of kind ssh, on a controller with an SSH CA, for a user whose name is a principal."""
        if terms.get("kind") != "ssh":
            if req.ssh_public_key is not None:
                raise Invalid(f"ssh_public_key: service {req.service!r} is not of kind ssh "
                              "(no certificate to sign); leave it out")
            return None
        if req.ssh_public_key is None:
            raise Invalid(f"ssh_public_key: service {req.service!r} is of kind ssh: send "
                          "your OpenSSH public key (aegis-controller access request "
                          "--ssh-key ~/.ssh/id_ed25519.pub)")
        try:
            key = check_public_key(req.ssh_public_key)
        except ValueError as e:
            raise Invalid(str(e)) from None
        if self.ssh_ca is None:
            raise Conflict(f"service {req.service!r} is of kind ssh but this controller has "
                           "no SSH CA: an operator starts it with --ssh-ca-mount")
        if not PRINCIPAL.match(user.name):
            raise Forbidden(f"your name {user.name!r} cannot be an SSH principal (letters, "
                            "digits, '.', '_', '@', '-'; at most 64)")
        return key

    def _sign(self, row: Any, valid_before: int) -> Any:
        if self.ssh_ca is None:
            raise Conflict(f"request {row.request_id} is for an ssh service but this "
                           "controller has no SSH CA now (--ssh-ca-mount); nothing granted")
        try:
            return self.ssh_ca.sign(row.ssh_public_key, row.user_name,
                                    ssh_key_id(row.user_name, row.request_id), valid_before)
        except SshCaError as e:
            raise Unavailable(f"SSH certificate not signed, nothing granted: {e}") from None

    def _krl_order(self, rec: Recorder, row: Any, node_id: str, actor: str, why: str,
                   now: int) -> str | None:
        """A revoke-ssh-cert order to ``node_id`` for ``row``'s certificate, if it has one
        still valid and the node is live; its id."""
        if not row.ssh_serial or now >= (row.expires_at or 0) or \
                self.nodes.state_in(rec.conn, node_id) in NOT_LIVE:
            return None
        signed = self.orders.create_in(rec, node_id, "revoke-ssh-cert", {
            "serial": row.ssh_serial, "key_id": row.ssh_key_id, "reason": why[:200]}, actor)
        return str(signed.order.id)

    def _revoke_edges(self, rec: Recorder, request_id: str, node_id: str | None,
                      actor: str, why: str) -> dict[str, list[str]]:
        """Revoke orders for the request's active edges (on ``node_id`` only, if given),
        and KRL orders for its certificate there; their ids (``revoke_orders``,
        ``krl_orders`` when there is a certificate)."""
        q = sa.select(tables.access_edges).where(_e.request_id == request_id,
                                                 _e.status == "active")
        if node_id is not None:
            q = q.where(_e.node_id == node_id)
        row = self._row(rec.conn, request_id)
        now = int(time.time())
        made: dict[str, list[str]] = {"revoke_orders": []}
        if row.ssh_serial:
            made["krl_orders"] = []
        for edge in rec.conn.execute(q).all():
            order_id = None
            if self.nodes.state_in(rec.conn, edge.node_id) not in NOT_LIVE:
                signed = self.orders.create_in(rec, edge.node_id, "revoke",
                                               {"edge": edge.edge}, actor)
                order_id = str(signed.order.id)
                made["revoke_orders"].append(order_id)
            krl = self._krl_order(rec, row, edge.node_id, actor, why, now)
            if krl:
                made["krl_orders"].append(krl)
            rec.conn.execute(tables.access_edges.update().where(
                _e.request_id == request_id, _e.node_id == edge.node_id
            ).values(status="revoked", revoke_order=order_id, krl_order=krl))
        return made

    @staticmethod
    def _end(conn: Connection, request_id: str, status: str, now: int, why: str) -> None:
        conn.execute(tables.access_requests.update().where(_r.request_id == request_id)
                     .values(status=status, ended_at=now, end_reason=why[:2000]))

    @staticmethod
    def _state(conn: Connection, row: Any) -> AccessState:
        edges = conn.execute(sa.select(tables.access_edges).where(
            _e.request_id == row.request_id).order_by(_e.node_id)).all()
        terms = json.loads(row.terms)
        return AccessState(
            request_id=row.request_id, service=row.service, rule=row.rule, status=row.status,
            sub=row.sub, user_name=row.user_name, groups=json.loads(row.groups),
            source=row.source, ttl=row.ttl, reason=row.reason,
            approvals_needed=terms["approvals"], approvals=json.loads(row.approvals),
            created_at=row.created_at, granted_at=row.granted_at, expires_at=row.expires_at,
            ended_at=row.ended_at, end_reason=row.end_reason,
            edges=[{"node_id": e.node_id, "edge": e.edge, "status": e.status,
                    "grant_order": e.grant_order, "revoke_order": e.revoke_order,
                    "krl_order": e.krl_order, "first_packet_ns": e.first_packet_ns,
                    "last_packet_ns": e.last_packet_ns}
                   for e in edges],
            ssh=SshCertificate(certificate=row.ssh_certificate, serial=row.ssh_serial,
                               key_id=row.ssh_key_id, principal=row.ssh_principal,
                               valid_after=row.ssh_valid_after,
                               valid_before=row.ssh_valid_before)
            if row.ssh_certificate else None)


def _user_of(row: Any) -> User:
    return User(sub=row.sub, name=row.user_name, groups=tuple(json.loads(row.groups)))
