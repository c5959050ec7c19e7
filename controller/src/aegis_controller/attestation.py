"""Attestation: a node's expected profile, single-use challenges, signed reports judged
against the profile (a verdict moves the trust state), and heartbeats with the deadline
after which a silent node becomes suspect."""

from __future__ import annotations

import json
import logging
import secrets
import time

import sqlalchemy as sa
from sqlalchemy import Connection

from aegis_protocol.attestation import (
    Challenge,
    ExpectedProfile,
    SignedReport,
    Verdict,
    profile_from_document,
)
from aegis_protocol.enrollment import Heartbeat, HeartbeatAck, Inventory
from aegis_protocol.signing import SignatureError, load_public_key, verify

from . import db, tables
from .errors import Conflict, DomainError, Forbidden, Invalid
from .ledger import Kind, Ledger, Recorder
from .nodes import NOT_LIVE, WATCHED, NodeState, NodeStore
from .orders import Orders
from .trust import (
    TransitionRefused,
    after_attestation,
    after_lost_events,
    judge,
    missed_deadline,
    suspicion_of,
    transition,
)

log = logging.getLogger(__name__)
NONCE_TTL = 120
#: Events a node may lose between two heartbeats before it is suspect (``serve
#: --lost-events-threshold``).
LOST_EVENTS_THRESHOLD = 100
#: Challenges a node may hold at once; asking for more drops its oldest.
MAX_OUTSTANDING_CHALLENGES = 4
_c = tables.nonces.c


def profile_document(text: str, source: str) -> ExpectedProfile:
    """The expected profile in the JSON ``text`` (an expected profile, or the golden record
    the harden role wrote), or :class:`~.errors.Invalid` naming ``source`` and the problem.
    ``profile set`` reads it from a file; the recovery engine from a verified node."""
    try:
        return profile_from_document(json.loads(text))
    except ValueError as err:  # pydantic's ValidationError and JSONDecodeError are
        raise Invalid(f"{source}: neither an expected profile nor a golden record "
                      f"({err})") from None


class Attestation:
    """Profiles, challenges, reports and heartbeats of enrolled nodes."""

    def __init__(self, nodes: NodeStore, ledger: Ledger, orders: Orders) -> None:
        self.nodes = nodes
        self.ledger = ledger
        self.orders = orders
        self.lost_events_threshold = LOST_EVENTS_THRESHOLD

    def set_profile(self, node_id: str, profile: ExpectedProfile, actor: str) -> None:
        with self.ledger.recording() as rec:
            state = self.set_profile_in(rec, node_id, profile, actor)
        if state not in NOT_LIVE:
            # an enrolled node measures against the new profile now, not at its next period
            self.orders.create(node_id, "attest", {"reason": "expected profile changed"}, actor)

    def set_profile_in(self, rec: Recorder, node_id: str, profile: ExpectedProfile,
                       actor: str) -> NodeState:
        """Store ``node_id``'s expected profile and record it, inside the caller's recording
        transaction (no attest order: see :meth:`set_profile`); returns the node's state."""
        state = self.nodes.set_profile(rec.conn, node_id, profile.model_dump_json())
        rec.append(Kind.ATTESTATION, node_id,
                   {"event": "expected_profile_set", "golden_files": len(profile.golden),
                    "bpf_entries": len(profile.bpf)}, actor=actor)
        return state

    def challenge(self, node_id: str) -> Challenge:
        """A new single-use nonce. Used and expired nonces (of every node) are purged
        first — a purged nonce is unknown, so a replayed report is still refused — and the
        node keeps at most :data:`MAX_OUTSTANDING_CHALLENGES`: its oldest ones go."""
        now = int(time.time())
        nonce, expires = secrets.token_urlsafe(24), now + NONCE_TTL
        with db.transaction(self.nodes.engine) as conn:
            conn.execute(tables.nonces.delete().where(
                _c.used_at.is_not(None) | (_c.expires_at <= now)))
            keep = (sa.select(_c.nonce).where(_c.node_id == node_id)
                    .order_by(_c.expires_at.desc(), _c.nonce)
                    .limit(MAX_OUTSTANDING_CHALLENGES - 1))
            conn.execute(tables.nonces.delete().where(_c.node_id == node_id,
                                                      _c.nonce.not_in(keep)))
            conn.execute(tables.nonces.insert().values(nonce=nonce, node_id=node_id,
                                                       expires_at=expires))
        return Challenge(nonce=nonce, expires_at=expires)

    def _refuse(self, node_id: str, error: type[DomainError], problem: str) -> DomainError:
        self.ledger.append(Kind.ATTESTATION, node_id, {"verdict": "refused", "reason": problem},
                           actor=f"node:{node_id}")
        return error(f"attestation refused: {problem}")

    @staticmethod
    def _spend_nonce(conn: Connection, node_id: str, nonce: str) -> bool:
        now = int(time.time())
        return conn.execute(tables.nonces.update().where(
            _c.nonce == nonce, _c.node_id == node_id, _c.used_at.is_(None),
            _c.expires_at > now).values(used_at=now)).rowcount == 1

    def attest(self, node_id: str, signed: SignedReport) -> Verdict:
        """Verify and judge a report; the nonce, the measurement, the state move and the
        verdict's record are written in one transaction."""
        report = signed.report
        node = self.nodes.get(node_id)
        if report.node_id != node_id:
            raise self._refuse(node_id, Forbidden, f"report is for node {report.node_id!r}")
        try:
            verify(load_public_key(node["identity_key"] or ""), report, signed.signature)
        except SignatureError as e:
            raise self._refuse(node_id, Forbidden, f"signature does not verify with the "
                                                   f"node's enrolled identity key ({e})"
                               ) from None
        problems = (judge(report, ExpectedProfile.model_validate_json(node["profile"]))
                    if node["profile"] else ["no expected profile is set for this node"])
        with self.ledger.recording() as rec:
            if not self._spend_nonce(rec.conn, node_id, report.nonce):
                replayed = True
            else:
                replayed = False
                # kept for operators (node show, --pin-bpf)
                self.nodes.update(node_id, rec.conn,
                                  measurement=report.measurement.model_dump_json())
                now_row = self.nodes.row_in(rec.conn, node_id)
                current = now_row["state"]
                # without an expected profile there is nothing to be trusted against
                t = (after_attestation(current, problems, now_row["reason"])
                     if node["profile"] else None)
                if t is not None:
                    self.nodes.move_in(rec, node_id, t, f"node:{node_id}")
                state = t.after if t else current
                rec.append(Kind.ATTESTATION, node_id,
                           {"verdict": "match" if not problems else "mismatch",
                            "mismatches": problems[:50], "state": state,
                            "kernel": report.measurement.kernel_release},
                           actor=f"node:{node_id}")
        if replayed:
            raise self._refuse(node_id, Conflict, "nonce unknown, expired, for another node "
                                                  "or already used (replayed report); ask "
                                                  "for a new challenge")
        reason = t.reason if t else (now_row["reason"] if not problems
                                     else "; ".join(problems))
        return Verdict(node_id=node_id, ok=not problems, state=state, reason=reason,
                       mismatches=problems)

    def clear_suspicion(self, node_id: str, reason: str, actor: str) -> None:
        """An operator trusts a suspect node again (recorded with the operator's reason):
        the only way, short of a rebuild, to clear a measurement mismatch."""
        if not reason.strip():
            raise Invalid("give a --reason: it is recorded on the ledger")
        node = self.nodes.get(node_id)
        if node["state"] != NodeState.SUSPECT:
            raise Conflict(f"node {node_id!r} is {node['state']}, not suspect: nothing to "
                           "clear (a quarantined node is released by a release order)")
        try:
            t = transition(node["state"], NodeState.TRUSTED,
                           f"suspicion ({suspicion_of(node['reason']) or 'unknown'}) cleared "
                           f"by an operator: {reason}", operator=True)
        except TransitionRefused as e:
            raise Conflict(str(e)) from None
        self.nodes.move(node_id, t, actor)

    def heartbeat(self, node_id: str, hb: Heartbeat) -> HeartbeatAck:
        if hb.node_id != node_id:
            raise Forbidden(f"heartbeat is for node {hb.node_id!r} but the client "
                            f"certificate is {node_id!r}")
        node = self.nodes.get(node_id)
        now = int(time.time())
        values: dict[str, object] = {"heartbeat_at": now, "last_seen": now}
        wanted = False
        if hb.inventory is not None:
            values["inventory"] = hb.inventory.model_dump_json()
            held = node.get("inventory")
            # the one before a change is kept: the console shows what changed
            if held and Inventory.model_validate_json(held).digest() != hb.inventory.digest():
                values.update(inventory_previous=held, inventory_changed_at=now)
        elif hb.inventory_digest is not None:
            held = node.get("inventory")
            wanted = held is None or Inventory.model_validate_json(held).digest() != \
                hb.inventory_digest
        self.nodes.update(node_id, **values)
        state = self._judge_lost(node_id, hb.events_lost) or node["state"]
        self.nodes.notify(node_id)  # e.g. the secrets gate: due for (new) secrets?
        return HeartbeatAck(inventory_wanted=wanted, trust=state)

    def _judge_lost(self, node_id: str, lost: dict[str, int]) -> str | None:
        """Make the node suspect when it lost more events than the threshold; returns its
        new state (None: unchanged)."""
        if sum(lost.values()) <= self.lost_events_threshold:
            return None
        with self.ledger.recording() as rec:
            row = self.nodes.row_in(rec.conn, node_id)
            t = after_lost_events(row["state"], row["reason"], lost,
                                  self.lost_events_threshold)
            if t is not None:
                self.nodes.move_in(rec, node_id, t, f"node:{node_id}")
        if t is None:
            return None
        log.warning("node lost events: now suspect", extra={"node": node_id, "lost": lost})
        return t.after

    def check_deadlines(self, deadline: int, now: int | None = None) -> list[str]:
        """Nodes (enrolled or trusted) silent for more than ``deadline`` seconds become
        suspect; returns their ids."""
        now = int(time.time()) if now is None else now
        rows = self.nodes.silent(WATCHED, now - deadline)
        for row in rows:
            try:
                self.nodes.move(row["node_id"], missed_deadline(
                    row["state"], now - row["heartbeat_at"], deadline), "controller")
            except Conflict as e:  # it moved (or beat) in the meantime
                log.info("deadline check did not move the node", extra={
                    "node": row["node_id"], "why": e.message})
        return [row["node_id"] for row in rows]
