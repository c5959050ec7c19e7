"""Recovery jobs in the database: the one place that reads and writes ``recovery_jobs`` and
``recovery_history`` (migration 0007).

Every change of a job's state goes through :func:`.states.transition` and is written in
ONE transaction with its ledger record (``rebuild``, subject the node) and its history
line: both or neither. A job is created only for a node that exists and is
``quarantined``: an unknown node (:class:`~..errors.NotFound`) or a node in another state
(:class:`~..errors.Conflict`) is refused with a message saying why, and **no job is
written** (a job that never started has nothing to show; the node is untouched). A job
that starts and then fails in a step is kept, ``failed``, with the step's error.

Leases, for several controller replicas on one database: :meth:`RecoveryStore.claim` takes
one runnable job (in flight, its lease free or expired; PostgreSQL ``SELECT ... FOR UPDATE
SKIP LOCKED``, SQLite one ``BEGIN IMMEDIATE`` writer transaction), sets ``lease_owner`` /
``lease_until`` and increments ``generation``. Every later write of that holder names its
:class:`Lease` and is fenced by the generation (``UPDATE ... WHERE job_id = ? AND
generation = ?``): zero rows means another replica took the job over after the lease
expired, and :class:`LeaseLost` is raised (the holder must stop: its step is cancelled).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection, Engine, exc

from .. import db, tables
from ..errors import Conflict, Invalid, NotFound
from ..ledger import Kind, Ledger, Recorder
from ..nodes import NodeState, NodeStore
from .snapshot import Cause, JobView
from .states import (
    IN_FLIGHT,
    TERMINAL,
    JobState,
    JobTransition,
    JobTransitionRefused,
    transition,
)
from .steps import StepCancelled

log = logging.getLogger(__name__)
_j = tables.recovery_jobs.c
_h = tables.recovery_history.c

#: Key of the PostgreSQL advisory lock that serialises the guard rails' decisions (two
#: replicas deciding at once could each start a job and exceed ``max_in_flight``).
_PG_DECIDE_LOCK = 0x41E6_1EC0
#: Longest error or reason kept (one line).
MAX_TEXT = 500


class LeaseLost(StepCancelled):
    """The job's lease is no longer ours (it expired and another replica claimed the job):
    nothing was written; stop working on the job."""


@dataclass(frozen=True)
class Lease:
    """A replica's hold on one job: every write it makes is fenced by ``generation``."""

    job_id: str
    owner: str
    generation: int


def _line(text: str) -> str:
    """``text`` as one bounded line (errors and reasons go to the ledger and the CLI)."""
    return " ".join(str(text).split())[:MAX_TEXT]


def _decode(row: Any) -> dict[str, Any]:
    job = dict(row._mapping)
    job["data"] = json.loads(job["data"] or "{}")
    job["step_pgids"] = json.loads(job["step_pgids"] or "[]")
    return job


def view_of(job: Mapping[str, Any]) -> JobView:
    """A job row as the guard rails see it."""
    return JobView(job_id=job["job_id"], node_id=job["node_id"], cause=Cause(job["cause"]),
                   state=JobState(job["state"]), flagged_at=job["flagged_at"],
                   started_at=job["started_at"], ended_at=job["ended_at"],
                   failed_step=JobState(job["failed_step"]) if job["failed_step"] else None,
                   approved_by=job["approved_by"])


def _move_values(job: Mapping[str, Any], t: JobTransition, now: float, *, leased: bool,
                 data: Mapping[str, Any] | None, **columns: Any) -> dict[str, Any]:
    """The columns a move writes: the state and reason, when it started or ended, the
    failed step and error, the merged data; a leased move (or an end) frees the lease."""
    values: dict[str, Any] = {"state": t.after, "reason": t.reason, "updated_at": now,
                              **columns}
    if t.after == JobState.CONTAINING and job["started_at"] is None:
        values["started_at"] = now
    if t.after in TERMINAL:
        values["ended_at"] = now
    if t.after == JobState.FAILED:
        values.setdefault("failed_step", str(t.before))
        values["error"] = _line(values.get("error") or t.reason)
    if data:
        values["data"] = json.dumps({**job["data"], **data})
    if leased or t.after in TERMINAL:
        values.update(lease_owner=None, lease_until=None, step_pgids="[]")
    return values


class RecoveryStore:
    """Recovery jobs: create, read, move (with the ledger), lease."""

    def __init__(self, engine: Engine, ledger: Ledger, nodes: NodeStore) -> None:
        self.engine = engine
        self.ledger = ledger
        self.nodes = nodes

    # -- reading ----------------------------------------------------------------------
    def get(self, job_id: str) -> dict[str, Any]:
        with db.errors(self.engine), db.reader(self.engine) as conn:
            return self.get_in(conn, job_id)

    @staticmethod
    def get_in(conn: Connection, job_id: str) -> dict[str, Any]:
        row = conn.execute(sa.select(tables.recovery_jobs).where(_j.job_id == job_id)).first()
        if row is None:
            raise NotFound(f"no recovery job {job_id!r} (list them with `aegis-controller "
                           "recovery list`)")
        return _decode(row)

    def list(self, *, node_id: str | None = None, active: bool = False) -> list[dict[str, Any]]:
        with db.errors(self.engine), db.reader(self.engine) as conn:
            return self.list_in(conn, node_id=node_id, active=active)

    @staticmethod
    def list_in(conn: Connection, *, node_id: str | None = None,
                active: bool = False) -> list[dict[str, Any]]:
        query = sa.select(tables.recovery_jobs).order_by(_j.created_at, _j.job_id)
        if node_id is not None:
            query = query.where(_j.node_id == node_id)
        if active:
            query = query.where(_j.state.not_in([str(s) for s in TERMINAL]))
        return [_decode(r) for r in conn.execute(query)]

    def history(self, job_id: str) -> list[dict[str, Any]]:
        with db.errors(self.engine), db.reader(self.engine) as conn:
            self.get_in(conn, job_id)
            rows = conn.execute(sa.select(tables.recovery_history).where(
                _h.job_id == job_id).order_by(_h.seq)).all()
        return [{**dict(r._mapping), "fields": json.loads(r.fields)} for r in rows]

    def views_in(self, conn: Connection) -> list[JobView]:
        return [view_of(j) for j in self.list_in(conn)]

    # -- creating ---------------------------------------------------------------------
    def create(self, node_id: str, *, actor: str, cause: Cause = Cause.COMPROMISED,
               reason: str | None = None, now: float | None = None) -> dict[str, Any]:
        """A new ``queued`` job for the quarantined ``node_id`` (see the module doc for
        what is refused); recorded on the ledger with the job's history's first line."""
        with self.ledger.recording() as rec:
            job_id = self.create_in(rec, node_id, actor=actor, cause=cause, reason=reason,
                                    now=now)
        return self.get(job_id)

    def create_in(self, rec: Recorder, node_id: str, *, actor: str,
                  cause: Cause = Cause.COMPROMISED, reason: str | None = None,
                  now: float | None = None) -> str:
        """:meth:`create` inside the caller's recording transaction; returns the job id."""
        now = time.time() if now is None else now
        node = self.nodes.row_in(rec.conn, node_id)  # NotFound: "no node 'x'"
        if node["state"] != NodeState.QUARANTINED:
            raise Conflict(f"node {node_id!r} is {node['state']}, not quarantined: a recovery "
                           "job replaces a quarantined node only (quarantine it first)")
        active = rec.conn.execute(sa.select(_j.job_id, _j.state).where(
            _j.node_id == node_id, _j.state.not_in([str(s) for s in TERMINAL]))).first()
        if active is not None:
            raise Conflict(f"node {node_id!r} already has recovery job {active.job_id} "
                           f"({active.state}): see `aegis-controller recovery show "
                           f"{active.job_id}`")
        job_id = str(uuid.uuid4())
        why = _line(reason or f"node {node_id} is quarantined ({node['reason']})")
        # what the replacement must not reuse: the node's certificate and identity key
        data = {"old_cert_serial": node["cert_serial"], "old_identity_key": node["identity_key"]}
        try:
            with rec.conn.begin_nested():  # a concurrent create loses on the unique index
                rec.conn.execute(tables.recovery_jobs.insert().values(
                    job_id=job_id, node_id=node_id, cause=str(Cause(cause)),
                    state=JobState.QUEUED, reason=why, flagged_at=now, data=json.dumps(data),
                    generation=0, step_pgids="[]", created_at=now, updated_at=now))
        except exc.IntegrityError:
            raise Conflict(f"node {node_id!r} already has an active recovery job: see "
                           "`aegis-controller recovery list`") from None
        self._history(rec.conn, job_id, JobState.QUEUED, f"job created: {why}",
                      {"cause": str(cause), "actor": actor}, now)
        rec.append(Kind.REBUILD, node_id, {"event": "job_created", "job_id": job_id,
                                           "cause": str(cause), "reason": why}, actor=actor)
        log.info("recovery job created", extra={"job": job_id, "node": node_id,
                                                "cause": str(cause)})
        return job_id

    # -- moving -----------------------------------------------------------------------
    def move(self, job_id: str, target: JobState, reason: str, *, actor: str,
             operator: bool = False, lease: Lease | None = None,
             data: Mapping[str, Any] | None = None,
             also: Callable[[Recorder, dict[str, Any]], None] | None = None,
             now: float | None = None, **columns: Any) -> dict[str, Any]:
        """Move the job to ``target`` (checked by :func:`.states.transition`), with its
        ledger record and history line, in one transaction; ``data`` is merged into the
        job's data, ``also(rec, job)`` runs in the same transaction (the controller-side
        actions of a step: the node's move, its profile...). With ``lease``, the write is
        fenced: :class:`LeaseLost` if the job is no longer that lease's, and the lease is
        released with the move (the next step is claimed again)."""
        with self.ledger.recording() as rec:
            return self.move_in(rec, job_id, target, reason, actor=actor, operator=operator,
                                lease=lease, data=data, also=also, now=now, **columns)

    def move_in(self, rec: Recorder, job_id: str, target: JobState, reason: str, *,
                actor: str, operator: bool = False, lease: Lease | None = None,
                data: Mapping[str, Any] | None = None,
                also: Callable[[Recorder, dict[str, Any]], None] | None = None,
                now: float | None = None, **columns: Any) -> dict[str, Any]:
        """:meth:`move` inside the caller's recording transaction."""
        now = time.time() if now is None else now
        job = self.get_in(rec.conn, job_id)
        if lease is not None and (job["generation"] != lease.generation
                                  or job["lease_owner"] != lease.owner):
            raise self._lost(lease, job)
        try:
            t = transition(job["state"], target, _line(reason), operator=operator)
        except JobTransitionRefused as e:
            raise Conflict(f"recovery job {job_id}: {e}") from None
        values = _move_values(job, t, now, leased=lease is not None, data=data, **columns)
        where = [_j.job_id == job_id, _j.state == t.before]
        if lease is not None:
            where.append(_j.generation == lease.generation)
        if rec.conn.execute(tables.recovery_jobs.update().where(*where)
                            .values(**values)).rowcount != 1:
            if lease is not None:
                raise self._lost(lease, job)
            raise Conflict(f"recovery job {job_id} is no longer {t.before}: not moved to "
                           f"{t.after}")
        job.update(values)
        if "data" in values:
            job["data"] = json.loads(values["data"])
        self._history(rec.conn, job_id, t.after, f"{t.before} -> {t.after}: {t.reason}",
                      {"actor": actor}, now)
        body: dict[str, Any] = {"event": "transition", "job_id": job_id, "from": t.before,
                                "to": t.after, "reason": t.reason}
        if t.after == JobState.FAILED:
            body["failed_step"] = values["failed_step"]
        rec.append(Kind.REBUILD, job["node_id"], body, actor=actor)
        if also is not None:
            also(rec, job)
        log.info("recovery job %s -> %s", t.before, t.after, extra={
            "job": job_id, "node": job["node_id"], "from": str(t.before), "to": str(t.after),
            "reason": t.reason})
        return job

    def approve(self, job_id: str, actor: str, now: float | None = None) -> dict[str, Any]:
        """An operator lets a held job go on: back to ``queued``, not held again."""
        job = self.get(job_id)
        if job["state"] != JobState.AWAITING_APPROVAL:
            raise Conflict(f"recovery job {job_id} is {job['state']}: only a job awaiting "
                           "approval can be approved")
        return self.move(job_id, JobState.QUEUED, f"approved by {actor}", actor=actor,
                         operator=True, now=now, approved_by=actor)

    def reject(self, job_id: str, actor: str, reason: str,
               now: float | None = None) -> dict[str, Any]:
        """An operator rejects a held job: ``failed``; its node stays quarantined."""
        if not reason or not reason.strip():
            raise Invalid("give a --reason: it is recorded on the ledger")
        job = self.get(job_id)
        if job["state"] != JobState.AWAITING_APPROVAL:
            raise Conflict(f"recovery job {job_id} is {job['state']}: only a job awaiting "
                           "approval can be rejected")
        return self.move(job_id, JobState.FAILED, f"rejected by {actor}: {reason}",
                         actor=actor, operator=True, now=now)

    def note_in(self, conn: Connection, job_id: str, reason: str, now: float) -> None:
        """Keep why a queued job waits (shown by ``recovery list``; not a transition)."""
        conn.execute(tables.recovery_jobs.update().where(
            _j.job_id == job_id, _j.state == JobState.QUEUED, _j.reason != _line(reason)
        ).values(reason=_line(reason), updated_at=now))

    @staticmethod
    def serialise_decisions(conn: Connection) -> None:
        """Hold the guard rails' decision lock until ``conn``'s transaction ends (SQLite:
        the writer transaction already holds the write lock)."""
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_DECIDE_LOCK})

    # -- leases -----------------------------------------------------------------------
    def claim(self, owner: str, lease_s: float, now: float | None = None,
              exclude: Iterable[str] = ()) -> tuple[Lease, dict[str, Any]] | None:
        """Take one in-flight job whose lease is free or expired (oldest first, not in
        ``exclude``): its lease is ``owner``'s for ``lease_s`` seconds, its generation one
        more. None when there is none."""
        now = time.time() if now is None else now
        query = (sa.select(tables.recovery_jobs)
                 .where(_j.state.in_([str(s) for s in IN_FLIGHT]),
                        _j.lease_owner.is_(None) | (_j.lease_until < now))
                 .order_by(_j.started_at, _j.job_id).limit(1)
                 .with_for_update(skip_locked=True))  # SQLite: ignored (one writer anyway)
        skip = list(exclude)
        if skip:
            query = query.where(_j.job_id.not_in(skip))
        with db.transaction(self.engine) as conn:
            row = conn.execute(query).first()
            if row is None:
                return None
            job = _decode(row)
            generation = job["generation"] + 1
            if conn.execute(tables.recovery_jobs.update().where(
                    _j.job_id == job["job_id"], _j.generation == job["generation"]
            ).values(lease_owner=owner, lease_until=now + lease_s, generation=generation,
                     updated_at=now)).rowcount != 1:
                return None  # taken by another replica between the read and the write
        if job["lease_owner"] not in (None, owner):
            log.warning("recovery job taken over: the previous lease expired", extra={
                "job": job["job_id"], "node": job["node_id"], "from_owner": job["lease_owner"],
                "owner": owner})
        previous = job["lease_owner"]
        job.update(lease_owner=owner, lease_until=now + lease_s, generation=generation,
                   previous_owner=previous)
        return Lease(job["job_id"], owner, generation), job

    def _fenced(self, conn: Connection, lease: Lease, now: float, **values: Any) -> None:
        """``UPDATE`` the leased job, fenced: :class:`LeaseLost` when it is no longer ours
        (on PostgreSQL the row stays locked until ``conn`` commits)."""
        if conn.execute(tables.recovery_jobs.update().where(
                _j.job_id == lease.job_id, _j.generation == lease.generation,
                _j.lease_owner == lease.owner
        ).values(updated_at=now, **values)).rowcount != 1:
            raise self._lost(lease, None)

    def renew(self, lease: Lease, lease_s: float, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with db.transaction(self.engine) as conn:
            self._fenced(conn, lease, now, lease_until=now + lease_s)

    def release(self, lease: Lease, now: float | None = None) -> None:
        """Give the job's lease up (it stays in its state; any replica may claim it)."""
        now = time.time() if now is None else now
        with db.transaction(self.engine) as conn:
            self._fenced(conn, lease, now, lease_owner=None, lease_until=None)

    def update_data(self, lease: Lease, changes: Mapping[str, Any],
                    now: float | None = None) -> dict[str, Any]:
        """Merge ``changes`` into the leased job's data (fenced); returns the new data."""
        now = time.time() if now is None else now
        with db.transaction(self.engine) as conn:
            self._fenced(conn, lease, now)  # locks the row first (PostgreSQL)
            data = {**self.get_in(conn, lease.job_id)["data"], **changes}
            self._fenced(conn, lease, now, data=json.dumps(data))
        return data

    def add_pgid(self, lease: Lease, record: Mapping[str, Any],
                 now: float | None = None) -> None:
        """Remember a process group the leased job's step started (fenced)."""
        now = time.time() if now is None else now
        with db.transaction(self.engine) as conn:
            self._fenced(conn, lease, now)
            pgids = self.get_in(conn, lease.job_id)["step_pgids"]
            self._fenced(conn, lease, now, step_pgids=json.dumps([*pgids, dict(record)]))

    def set_pgids(self, lease: Lease, records: list[dict[str, Any]],
                  now: float | None = None) -> None:
        now = time.time() if now is None else now
        with db.transaction(self.engine) as conn:
            self._fenced(conn, lease, now, step_pgids=json.dumps(records))

    def progress(self, lease: Lease, message: str, fields: Mapping[str, Any],
                 now: float | None = None) -> None:
        """A progress line of the leased job's step (fenced)."""
        now = time.time() if now is None else now
        with db.transaction(self.engine) as conn:
            self._fenced(conn, lease, now)
            state = self.get_in(conn, lease.job_id)["state"]
            self._history(conn, lease.job_id, state, _line(message), fields, now)

    def _lost(self, lease: Lease, job: Mapping[str, Any] | None) -> LeaseLost:
        if job is None:
            try:
                job = self.get(lease.job_id)
            except NotFound:
                job = {}
        return LeaseLost(f"recovery job {lease.job_id}: lease of {lease.owner} (generation "
                         f"{lease.generation}) lost to {job.get('lease_owner') or 'nobody'} "
                         f"(generation {job.get('generation')}): not written")

    @staticmethod
    def _history(conn: Connection, job_id: str, state: str, message: str,
                 fields: Mapping[str, Any], now: float) -> None:
        seq = conn.execute(sa.select(sa.func.coalesce(sa.func.max(_h.seq), 0)).where(
            _h.job_id == job_id)).scalar_one() + 1
        conn.execute(tables.recovery_history.insert().values(
            job_id=job_id, seq=seq, at=now, state=str(state), message=message,
            fields=json.dumps(dict(fields), default=str)))
