"""The recovery engine: durable jobs that replace quarantined nodes, moved on by
:meth:`RecoveryEngine.tick` (testable, time passed in) or a background thread
(:meth:`~RecoveryEngine.start` / :meth:`~RecoveryEngine.stop`).

One tick:

a. **queue**: a ``quarantined`` node without an active job gets a ``queued`` job, cause
   ``compromised``. Not queued automatically: a node whose last job *failed* (it stays
   quarantined; an operator retries with ``aegis-controller recovery start NODE``, or the
   engine would loop on it), and a node the heartbeat deadline made ``suspect`` (silent
   is not compromised: it may be slow or cut off; such nodes are left to the operator for
   now, although the guard rails already know the ``unhealthy`` cause and its start-up
   timeout).
b. **judge**: every ``queued`` job, oldest first, by :func:`.guard.decide` with a snapshot
   of the fleet (each node's trust state; its role is its secrets role, else
   ``default``) and of every job: ``start`` moves it to ``containing``, ``hold`` to
   ``awaiting-approval`` with the decision's reason (logged as a warning), ``wait``
   keeps the reason in the job's row. Queueing and judging run in one write transaction
   under a lock, so two replicas never both start a job past ``max_in_flight``. A queued
   job whose node is no longer quarantined (an operator released it) fails.
c. **run**: each in-flight job whose lease is free or expired is claimed
   (:meth:`.store.RecoveryStore.claim`) and its state's step run once with a
   :class:`.steps.StepContext`; the lease is renewed while the step runs (lost: the step is
   cancelled and nothing more is written). The background loop (:meth:`~RecoveryEngine.
   dispatch`) runs each claimed job's step in a worker thread of its own, so the jobs the
   guard rails let be in flight at once (``max_in_flight``) progress at once; a finished
   worker wakes the loop, which claims the job's next step. :meth:`~RecoveryEngine.tick`
   runs the claimed steps one after the other in the caller's thread (tests, one-shot).
   Before a step runs again, whatever is left of the process groups a previous attempt
   recorded is killed (SIGTERM, then SIGKILL), with every process their members started in
   another session (Ansible's task workers).
   The step's mapping is merged into the job's data and the job moves on:

   - ``containing`` -> ``collecting`` (the node must still be quarantined);
   - ``collecting`` -> ``replacing``, in the same transaction: a ``rebuild`` ledger record
     of the forensics bundle (sha256, bytes, path), the node's move ``quarantined ->
     rebuilding`` (no new certificate, ``nodes.NO_CERTIFICATE``; the move asks for its
     leased secrets to be revoked, the same durable request a quarantine makes, which the
     secrets revoker carries out) and the old machine's certificate serial and identity
     key cleared (recorded, ``credentials_revoked``): its certificate and signatures are
     refused from then on;
   - ``replacing`` -> ``verifying``;
   - ``verifying`` -> ``enrolling``, in the same transaction: the node's expected profile
     from ``data["golden"]`` (as ``aegis-controller profile set`` does; BPF programs can
     only be pinned after the new node's first attestation);
   - ``enrolling``: the enroll step runs once (with ``token_command``); then the job waits,
     re-checked each tick, until the node is ``trusted`` with a certificate serial and an
     identity key other than those it had when the job was created -> ``trusted``; a
     replacement found ``suspect``, ``quarantined`` or ``retired`` again, or not trusted
     within ``enroll_timeout_s``, fails the job.

A :class:`.steps.StepError` (or any exception of a step) fails the job with the message and
the state it failed in. The node is never put in service by a failure: it stays
``quarantined`` if the failure came before the replacement began, ``rebuilding`` after
(no certificate, no orders' effect, no secrets) until an operator decides.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy import Connection, Engine

from .. import db, tables
from ..errors import DomainError, Invalid
from ..ledger import Kind, Ledger, Recorder
from ..nodes import NodeState, NodeStore
from ..processes import kill_group, process_start
from ..trust import TransitionRefused
from ..trust import transition as node_transition
from .guard import Action, GuardRails, decide
from .snapshot import FleetNode
from .states import JobState
from .steps import StepCancelled, StepContext, StepError, Steps
from .store import Lease, LeaseLost, RecoveryStore, view_of

if TYPE_CHECKING:
    from ..attestation import Attestation
    from ..domain import Controller
    from .settings import RecoverySettings

log = logging.getLogger(__name__)

DEFAULT_LEASE_S = 60.0
DEFAULT_POLL_S = 5.0
DEFAULT_ENROLL_TIMEOUT_S = 1800.0
#: Seconds a leftover process group gets between SIGTERM and SIGKILL.
KILL_GRACE_S = 5.0
#: The role of a node without a secrets role, for "never the last node of a role".
DEFAULT_ROLE = "default"
ACTOR = "controller:recovery"

_J = JobState
#: Each acting state's step (a method of :class:`.steps.Steps`) and the state after it.
STEP_OF = {_J.CONTAINING: "contain", _J.COLLECTING: "collect", _J.REPLACING: "replace",
           _J.VERIFYING: "verify", _J.ENROLLING: "enroll"}
NEXT = {_J.CONTAINING: _J.COLLECTING, _J.COLLECTING: _J.REPLACING,
        _J.REPLACING: _J.VERIFYING, _J.VERIFYING: _J.ENROLLING, _J.ENROLLING: _J.TRUSTED}
#: The node's trust states each step may find (before the replacement: still quarantined;
#: an enroll step resumed after the new node enrolled finds it enrolled, or even trusted).
NODE_STATES_FOR = {
    _J.CONTAINING: (NodeState.QUARANTINED,), _J.COLLECTING: (NodeState.QUARANTINED,),
    _J.REPLACING: (NodeState.REBUILDING,), _J.VERIFYING: (NodeState.REBUILDING,),
    _J.ENROLLING: (NodeState.REBUILDING, NodeState.ENROLLED, NodeState.TRUSTED)}


def default_owner() -> str:
    """A replica's name for its leases: host, process and a random part (a restarted
    process is another owner)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class RecoveryEngine:
    """Moves recovery jobs on (see the module doc). ``owner`` names this replica's leases;
    ``token_command`` is what the enroll step runs on the control node for a one-time
    bootstrap token (the node id appended)."""

    def __init__(self, engine_db: Engine, ledger: Ledger, nodes: NodeStore, steps: Steps,
                 rails: GuardRails, owner: str, token_command: Sequence[str], *,
                 attestation: Attestation, lease_s: float = DEFAULT_LEASE_S,
                 poll_s: float = DEFAULT_POLL_S,
                 enroll_timeout_s: float = DEFAULT_ENROLL_TIMEOUT_S,
                 kill_grace_s: float = KILL_GRACE_S) -> None:
        if not owner or not owner.strip():
            raise Invalid("a recovery engine needs an owner name for its leases")
        if not token_command:
            raise Invalid("a recovery engine needs a token command (what the enroll step "
                          "runs for a node's one-time bootstrap token)")
        for name, value in (("lease_s", lease_s), ("poll_s", poll_s),
                            ("enroll_timeout_s", enroll_timeout_s)):
            if not value > 0:
                raise Invalid(f"recovery {name} must be more than 0 seconds, got {value!r}")
        self.db = engine_db
        self.ledger = ledger
        self.nodes = nodes
        self.steps = steps
        self.rails = rails
        self.owner = owner
        self.token_command = list(token_command)
        self.attestation = attestation
        self.lease_s = float(lease_s)
        self.poll_s = float(poll_s)
        self.enroll_timeout_s = float(enroll_timeout_s)
        self.kill_grace_s = kill_grace_s
        self.store = RecoveryStore(engine_db, ledger, nodes)
        self.host = socket.gethostname()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._running: set[threading.Event] = set()  # the cancel events of running steps
        self._workers: dict[str, threading.Thread] = {}  # job id -> the worker running it
        self._lock = threading.Lock()

    @classmethod
    def from_controller(cls, ctl: Controller, steps: Steps, rails: GuardRails,
                        token_command: Sequence[str], owner: str | None = None,
                        **options: Any) -> RecoveryEngine:
        """The engine on a controller's database, ledger and node store."""
        return cls(ctl.engine, ctl.ledger, ctl.nodes, steps, rails, owner or default_owner(),
                   token_command, attestation=ctl.attestation, **options)

    # -- the background loop ----------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, daemon=True,
                                        name="recovery-engine")
        self._thread.start()
        log.info("recovery engine started", extra={"owner": self.owner,
                                                   "lease_s": self.lease_s})

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the loop; every running step is cancelled and its worker joined (its job is
        resumed later, by this replica after a restart or by another one)."""
        self._stop.set()
        self._wake.set()
        with self._lock:
            for cancel in self._running:
                cancel.set()
        deadline = time.monotonic() + timeout
        if self._thread is not None:
            self._thread.join(timeout=timeout)
            self._thread = None
        with self._lock:
            workers = list(self._workers.items())
        for job_id, worker in workers:
            worker.join(timeout=max(0.0, deadline - time.monotonic()))
            if worker.is_alive():
                log.warning("recovery step did not stop in time", extra={"job": job_id})

    def workers(self) -> list[str]:
        """The ids of the jobs whose step a worker of this engine runs now."""
        with self._lock:
            return [job_id for job_id, t in self._workers.items() if t.is_alive()]

    def wake(self) -> None:
        """Tick now rather than at the next poll (a node was quarantined, say)."""
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()  # before: a worker's wake during the dispatch is not lost
            try:
                self.dispatch()
            except Exception:
                log.exception("recovery engine tick failed")
            self._wake.wait(self.poll_s)

    # -- one tick ---------------------------------------------------------------------
    def tick(self, now: float | None = None) -> dict[str, list[str]]:
        """Queue, judge, run (see the module doc) once, the steps one after the other in
        this thread; returns the job ids it queued, started, held and ran a step of. ``now``
        (tests) is the time of the whole tick; by default each claim reads the clock again
        (a long step must not shorten the next job's lease)."""
        done: dict[str, list[str]] = {"queued": [], "started": [], "held": [], "ran": []}
        for lease, job, at in self._claims(now, done):
            self._run_step(lease, job, at, _clock(now))
        return done

    def dispatch(self, now: float | None = None) -> dict[str, list[str]]:
        """The background loop's tick: queue and judge as :meth:`tick` does, then claim every
        runnable job that no worker of this engine runs and start its step in a worker
        thread of its own; returns at once (``ran``: the jobs given a worker)."""
        done: dict[str, list[str]] = {"queued": [], "started": [], "held": [], "ran": []}
        for lease, job, at in self._claims(now, done):
            worker = threading.Thread(target=self._work, args=(lease, job, at, _clock(now)),
                                      daemon=True, name=f"recovery-{lease.job_id[:8]}")
            with self._lock:
                self._workers[lease.job_id] = worker
            worker.start()
        return done

    def _claims(self, now: float | None,
                done: dict[str, list[str]]) -> Iterator[tuple[Lease, dict[str, Any], float]]:
        """Judge, then claim each runnable job once (not one a worker runs) until none is
        left or the engine stops: (lease, job, the claim's time)."""
        self.judge(now, done)
        while not self._stop.is_set():
            at = time.time() if now is None else now
            claimed = self.store.claim(self.owner, self.lease_s, at,
                                       exclude=[*self.workers(), *done["ran"]])
            if claimed is None:
                return
            lease, job = claimed
            done["ran"].append(lease.job_id)
            yield lease, job, at

    def _run_step(self, lease: Lease, job: dict[str, Any], at: float,
                  clock: Callable[[], float]) -> None:
        try:
            self.run(lease, job, at, clock)
        except LeaseLost as e:
            log.warning("recovery job's lease lost: stopped", extra={
                "job": lease.job_id, "owner": self.owner, "why": str(e)})

    def _work(self, lease: Lease, job: dict[str, Any], at: float,
              clock: Callable[[], float]) -> None:
        """A worker: one step of one claimed job; then the loop looks for the next."""
        try:
            self._run_step(lease, job, at, clock)
        except Exception:  # e.g. the database went away: the lease expires, it is resumed
            log.exception("recovery job's step failed in its worker", extra={
                "job": lease.job_id})
        finally:
            with self._lock:
                if self._workers.get(lease.job_id) is threading.current_thread():
                    del self._workers[lease.job_id]
            self._wake.set()

    def judge(self, now: float | None, done: dict[str, list[str]] | None = None) -> None:
        """(a) and (b) of a tick, in one write transaction under the decision lock. The
        clock is read once the lock is held (``now``: a test's fixed time): read before, a
        job started while another's worker was committing its end could be dated before
        that end."""
        done = {"queued": [], "started": [], "held": []} if done is None else done
        with self.ledger.recording() as rec:
            self.store.serialise_decisions(rec.conn)
            now = time.time() if now is None else now
            done["queued"] += self._queue(rec, now)
            jobs = {j["job_id"]: j for j in self.store.list_in(rec.conn)}
            fleet = self.fleet_in(rec.conn)
            states = {n.node_id: n.state for n in fleet}
            queued = sorted((j for j in jobs.values() if j["state"] == _J.QUEUED),
                            key=lambda j: (j["flagged_at"], j["created_at"], j["job_id"]))
            for job in queued:
                if states.get(job["node_id"]) != NodeState.QUARANTINED:
                    jobs[job["job_id"]] = self.store.move_in(
                        rec, job["job_id"], _J.FAILED, f"node {job['node_id']} is "
                        f"{states.get(job['node_id'], 'unknown')}, no longer quarantined: "
                        "nothing to recover", actor=ACTOR, now=now)
                    continue
                decision = decide(view_of(job), fleet, [view_of(j) for j in jobs.values()],
                                  self.rails, now)
                if decision.action == Action.WAIT:
                    self.store.note_in(rec.conn, job["job_id"], decision.reason, now)
                    continue
                target = decision.next_state
                assert target is not None
                jobs[job["job_id"]] = self.store.move_in(rec, job["job_id"], target,
                                                         decision.reason, actor=ACTOR, now=now)
                if decision.action == Action.HOLD:
                    done["held"].append(job["job_id"])
                    log.warning("recovery job held for an operator: %s", decision.reason,
                                extra={"job": job["job_id"], "node": job["node_id"]})
                else:
                    done["started"].append(job["job_id"])

    def _queue(self, rec: Recorder, now: float) -> list[str]:
        """A job for each quarantined node without one (see the module doc)."""
        quarantined = rec.conn.execute(sa.select(tables.nodes.c.node_id).where(
            tables.nodes.c.state == NodeState.QUARANTINED).order_by(
            tables.nodes.c.node_id)).scalars().all()
        created = []
        for node_id in quarantined:
            jobs = self.store.list_in(rec.conn, node_id=node_id)
            if jobs and (jobs[-1]["state"] == _J.FAILED
                         or any(j["state"] not in (_J.TRUSTED, _J.FAILED) for j in jobs)):
                continue
            created.append(self.store.create_in(rec, node_id, actor=ACTOR, now=now))
        return created

    def fleet_in(self, conn: Connection) -> list[FleetNode]:
        """Every node not retired, its trust state and role (secrets role, else default)."""
        n = tables.nodes.c
        rows = conn.execute(sa.select(n.node_id, n.state, n.secrets_role).where(
            n.state != NodeState.RETIRED).order_by(n.node_id)).all()
        return [FleetNode(r.node_id, r.secrets_role or DEFAULT_ROLE, r.state) for r in rows]

    # -- running a step ---------------------------------------------------------------
    def run(self, lease: Lease, job: dict[str, Any], now: float,
            clock: Callable[[], float] | None = None) -> None:
        """Run the claimed job's step once and move it on (see the module doc). ``now`` is
        the claim's time; what the step's end writes is dated by ``clock`` (the real
        clock; tests that fix the time pass none and get ``now``)."""
        clock = clock or (lambda: now)
        state = JobState(job["state"])
        if job["step_pgids"]:
            self._kill_leftovers(lease, job)
        if state == _J.ENROLLING and job["data"].get("enroll_ran_at") is not None:
            self._await_trusted(lease, job, now)
            return
        node = self.nodes.get(job["node_id"])
        expected = NODE_STATES_FOR[state]
        if node["state"] not in expected:
            self._fail(lease, job, f"node {job['node_id']} is {node['state']}, not "
                                   f"{' or '.join(expected)} as {state} expects", now)
            return
        result = self._call_step(lease, job, clock)
        if result is None:
            return
        self._finish(lease, job, result, clock())

    def _call_step(self, lease: Lease, job: dict[str, Any],
                   clock: Callable[[], float]) -> dict[str, Any] | None:
        """The step's result, or None when it failed (the job is failed) or was cancelled
        (nothing written; the job is released or already someone else's)."""
        state = JobState(job["state"])
        name = STEP_OF[state]
        cancel = threading.Event()
        ctx = StepContext(job_id=lease.job_id, node_id=job["node_id"],
                          generation=lease.generation, data=dict(job["data"]),  # a copy
                          progress=self._progress(lease, job, name, cancel),
                          started_process=self._started(lease, name, cancel), cancel=cancel,
                          remember=self._remember(lease, cancel))
        self._progress(lease, job, name, cancel)(f"{name} step started",
                                                 attempt=lease.generation)
        began = time.monotonic()
        with self._renewing(lease, cancel):
            try:
                if state == _J.ENROLLING:
                    result = self.steps.enroll(ctx, list(self.token_command))
                else:
                    result = getattr(self.steps, name)(ctx)
            except StepCancelled as e:
                log.warning("recovery step cancelled", extra={
                    "job": lease.job_id, "node": job["node_id"], "step": name, "why": str(e)})
                if not isinstance(e, LeaseLost) and not self._lost(lease):
                    with contextlib.suppress(LeaseLost):  # shutdown: resumed later
                        self.store.progress(lease, f"{name} step cancelled ({e}): resumed "
                                                   "later, by this replica or another", {})
                        self.store.release(lease)
                return None
            except StepError as e:
                self._fail(lease, job, f"{name}: {e}", clock())
                return None
            except Exception as e:  # a step's bug fails the job, not the engine
                log.exception("recovery step crashed", extra={"job": lease.job_id,
                                                              "step": name})
                self._fail(lease, job, f"{name}: {type(e).__name__}: {e}", clock())
                return None
        if cancel.is_set():  # the lease was lost while the step ran: write nothing more
            return None
        try:
            result = dict(result or {})
            json.dumps(result)
        except (TypeError, ValueError) as e:  # it goes into the job's data, as JSON
            self._fail(lease, job, f"{name}: the step returned data that is not a JSON "
                                   f"object ({e})", clock())
            return None
        log.info("recovery step done", extra={"job": lease.job_id, "node": job["node_id"],
                                              "step": name,
                                              "seconds": round(time.monotonic() - began, 3)})
        return result

    def _lost(self, lease: Lease) -> bool:
        try:
            job = self.store.get(lease.job_id)
        except DomainError:
            return True
        return job["generation"] != lease.generation or job["lease_owner"] != self.owner

    def _finish(self, lease: Lease, job: dict[str, Any], result: dict[str, Any],
                now: float) -> None:
        state = JobState(job["state"])
        node_id = job["node_id"]
        if state == _J.ENROLLING:
            data = self.store.update_data(lease, {**result, "enroll_ran_at": now}, now)
            self._await_trusted(lease, {**job, "data": data}, now)
            return
        also: Any = None
        if state == _J.COLLECTING:
            problem = _bundle_problem(result)
            if problem:
                self._fail(lease, job, f"collect: {problem}", now)
                return
            also = self._replacing(node_id, result)
        elif state == _J.VERIFYING:
            try:
                profile = self._profile(node_id, result)
            except Invalid as e:
                self._fail(lease, job, f"verify: {e.message}", now)
                return

            def also(rec: Recorder, _job: dict[str, Any]) -> None:
                self.attestation.set_profile_in(rec, node_id, profile, ACTOR)
        try:
            self.store.move(lease.job_id, NEXT[state], f"{STEP_OF[state]} done",
                            actor=ACTOR, lease=lease, data=result, also=also, now=now)
        except (DomainError, TransitionRefused) as e:  # the node moved meanwhile
            message = e.message if isinstance(e, DomainError) else str(e)
            self._fail(lease, job, f"{STEP_OF[state]}: {message}", now)

    def _replacing(self, node_id: str, bundle: Mapping[str, Any]) -> Any:
        """What the move to ``replacing`` also writes: the bundle's record and the node's
        move to ``rebuilding`` (its certificate refused, its secrets' revocation asked)."""

        def also(rec: Recorder, job: dict[str, Any]) -> None:
            rec.append(Kind.REBUILD, node_id, {
                "event": "forensics_collected", "job_id": job["job_id"],
                "bundle_sha256": bundle["bundle_sha256"],
                "bundle_bytes": int(bundle["bundle_bytes"]),
                "bundle_path": str(bundle.get("bundle_path", ""))}, actor=ACTOR)
            node = self.nodes.row_in(rec.conn, node_id)
            t = node_transition(node["state"], NodeState.REBUILDING,
                                f"recovery job {job['job_id']}: replacing the node")
            self.nodes.move_in(rec, node_id, t, ACTOR)
            # the old machine's certificate and identity key are refused from now on (the
            # API accepts only the node's current serial; its signatures need its key)
            rec.conn.execute(tables.cert_renewals.delete().where(
                tables.cert_renewals.c.node_id == node_id))
            self.nodes.update(node_id, rec.conn, cert_serial=None, identity_key=None)
            rec.append(Kind.REBUILD, node_id, {
                "event": "credentials_revoked", "job_id": job["job_id"],
                "cert_serial": node["cert_serial"], "identity_key": node["identity_key"]},
                actor=ACTOR)

        return also

    @staticmethod
    def _profile(node_id: str, result: Mapping[str, Any]) -> Any:
        from ..attestation import profile_document

        golden = result.get("golden")
        if not isinstance(golden, str) or not golden.strip():
            raise Invalid("the verify step returned no golden record (data['golden'], a "
                          "JSON string) for the node's expected profile")
        return profile_document(golden, f"golden record of the new {node_id}")

    def _await_trusted(self, lease: Lease, job: dict[str, Any], now: float) -> None:
        node = self.nodes.get(job["node_id"])
        data = job["data"]
        fresh = (node["cert_serial"] not in (None, data.get("old_cert_serial"))
                 and node["identity_key"] not in (None, data.get("old_identity_key")))
        if node["state"] == NodeState.TRUSTED and fresh:
            self.store.move(lease.job_id, _J.TRUSTED, f"node {job['node_id']} attested "
                            f"trusted with a new certificate (serial {node['cert_serial']}) "
                            "and a new identity key", actor=ACTOR, lease=lease, now=now,
                            data={"new_cert_serial": node["cert_serial"]})
            return
        if node["state"] in (NodeState.SUSPECT, NodeState.QUARANTINED, NodeState.RETIRED):
            self._fail(lease, job, f"enroll: the replacement is {node['state']} "
                                   f"({node['reason']})", now)
            return
        waited = now - float(data["enroll_ran_at"])
        if waited > self.enroll_timeout_s:
            self._fail(lease, job, f"enroll: the replacement was not attested trusted within "
                                   f"{self.enroll_timeout_s:g} s (node is {node['state']}"
                                   f"{'' if fresh else ', with its old certificate or key'})",
                       now)
            return
        self.store.release(lease, now)

    def _fail(self, lease: Lease, job: dict[str, Any], error: str, now: float) -> None:
        """The job to ``failed`` with ``error`` (fenced); its node is not touched."""
        try:
            self.store.move(lease.job_id, _J.FAILED, error, actor=ACTOR, lease=lease,
                            now=now, error=error, failed_step=job["state"])
        except LeaseLost as e:
            log.warning("recovery job's lease lost before its failure was written",
                        extra={"job": lease.job_id, "why": str(e)})
            return
        log.error("recovery job failed: %s", error, extra={
            "job": lease.job_id, "node": job["node_id"], "step": job["state"]})

    # -- what a step gets -------------------------------------------------------------
    def _progress(self, lease: Lease, job: Mapping[str, Any], step: str,
                  cancel: threading.Event) -> Any:
        def progress(message: str, **fields: Any) -> None:
            try:
                self.store.progress(lease, message, fields)
            except LeaseLost:
                cancel.set()
                raise
            log.info("recovery: %s", message, extra={
                "job": lease.job_id, "node": job["node_id"], "step": step,
                "fields": fields})

        return progress

    def _remember(self, lease: Lease, cancel: threading.Event) -> Any:
        def remember(**fields: Any) -> None:
            try:
                self.store.update_data(lease, fields)
            except LeaseLost:
                cancel.set()
                raise

        return remember

    def _started(self, lease: Lease, step: str, cancel: threading.Event) -> Any:
        def started_process(pgid: int) -> None:
            record = {"pgid": int(pgid), "host": self.host, "start": process_start(pgid),
                      "generation": lease.generation, "step": step}
            try:
                self.store.add_pgid(lease, record)
            except LeaseLost:  # not ours to run: nothing of it may survive
                cancel.set()
                kill_group(int(pgid), record["start"], self.kill_grace_s)
                raise

        return started_process

    @contextlib.contextmanager
    def _renewing(self, lease: Lease, cancel: threading.Event) -> Iterator[None]:
        """Renew ``lease`` while the block runs; a lost lease sets ``cancel``."""
        done = threading.Event()
        with self._lock:
            self._running.add(cancel)
            if self._stop.is_set():  # stop() came between the claim and the step
                cancel.set()

        def renew() -> None:
            while not done.wait(max(self.lease_s / 3, 0.05)):
                try:
                    self.store.renew(lease, self.lease_s)
                except LeaseLost as e:
                    log.warning("recovery job's lease lost: cancelling its step", extra={
                        "job": lease.job_id, "why": str(e)})
                    cancel.set()
                    return
                except db.DatabaseError as e:
                    log.warning("recovery lease not renewed (retrying)", extra={
                        "job": lease.job_id, "why": str(e)})

        thread = threading.Thread(target=renew, daemon=True, name=f"lease-{lease.job_id[:8]}")
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join(timeout=10)
            with self._lock:
                self._running.discard(cancel)

    def _kill_leftovers(self, lease: Lease, job: Mapping[str, Any]) -> None:
        """Kill what is left of the process groups a previous attempt recorded, then
        forget them (fenced)."""
        for record in job["step_pgids"]:
            pgid = int(record["pgid"])
            if record.get("host") != self.host:
                log.warning("a previous attempt's process group is on another host: not "
                            "killed from here", extra={"job": lease.job_id, "pgid": pgid,
                                                       "host": record.get("host")})
                continue
            outcome = kill_group(pgid, record.get("start"), self.kill_grace_s)
            self.store.progress(lease, f"process group {pgid} of the previous attempt "
                                       f"(generation {record.get('generation')}, step "
                                       f"{record.get('step')}): {outcome}",
                                {"pgid": pgid, "outcome": outcome})
            log.info("previous attempt's process group: %s", outcome, extra={
                "job": lease.job_id, "pgid": pgid})
        self.store.set_pgids(lease, [])


def _bundle_problem(result: Mapping[str, Any]) -> str | None:
    digest, size = result.get("bundle_sha256"), result.get("bundle_bytes")
    if not isinstance(digest, str) or len(digest) != 64 or any(
            c not in "0123456789abcdef" for c in digest):
        return "the step returned no bundle_sha256 (64 lowercase hex digits)"
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        return "the step returned no bundle_bytes (a whole number)"
    return None


@dataclass(frozen=True)
class RecoveryWiring:
    """What ``serve`` needs to run the engine: the settings file, its steps, and the
    command the enroll play runs for a one-time bootstrap token."""

    settings: RecoverySettings
    steps: Steps
    token_command: Sequence[str]

    def start(self, ctl: Controller) -> RecoveryEngine:
        return start_recovery(ctl, self.steps, self.settings.guard_rails, self.token_command,
                              enroll_timeout_s=self.settings.enroll_timeout_s,
                              lease_s=self.settings.lease_s, poll_s=self.settings.poll_s)


def start_recovery(ctl: Controller, steps: Steps, rails: GuardRails,
                   token_command: Sequence[str], **options: Any) -> RecoveryEngine:
    """For ``serve``: a started recovery engine on ``ctl`` (stop it with ``.stop()`` at
    shutdown)."""
    engine = RecoveryEngine.from_controller(ctl, steps, rails, token_command, **options)
    engine.start()
    return engine


def _clock(now: float | None) -> Callable[[], float]:
    """The clock a step's end is dated by: the real one, or ``now`` when a test fixed it."""
    return time.time if now is None else (lambda: now)
