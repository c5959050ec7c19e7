"""The recovery engine on the controller's real database (SQLite, then PostgreSQL), its real
node store, enrollment and ledger, with stand-in steps (tests/recovery_standin.py: no
machine is touched; the real steps are tested elsewhere).

The test plays the fleet: nodes enroll for real (bootstrap token, fresh keys), an incident
quarantines them (a recorded state move), and the "new machine" of a replacement enrolls
again with a fresh key and is attested (the state move attestation makes)."""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from harness_domain import enroll_request, quarantine
from harness_domain import enroll_trusted as enroll
from recovery_standin import SimulatedCrash, StandInSteps

from aegis_controller import db, tables
from aegis_controller.domain import Controller, open_controller
from aegis_controller.errors import Conflict, NotFound, Unauthenticated
from aegis_controller.ledger import Kind, init_keys
from aegis_controller.nodes import NodeState
from aegis_controller.processes import group_members
from aegis_controller.recovery.engine import RecoveryEngine
from aegis_controller.recovery.guard import GuardRails
from aegis_controller.recovery.states import IN_FLIGHT, JobState
from aegis_controller.recovery.store import LeaseLost
from aegis_controller.settings import Settings
from aegis_controller.trust import transition

pytestmark = pytest.mark.integration

TOKEN_COMMAND = ["aegis-controller", "token", "issue", "--ttl", "600"]


def _open(state: Path, url: str) -> Controller:
    return open_controller(Settings.resolve(state, url, state / "ledger.anchor.json"))


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    init_keys(tmp_path / "keys")
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'controller.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def ctl(db_url: str, tmp_path: Path) -> Iterator[Controller]:
    controller = _open(tmp_path, db_url)
    yield controller
    controller.engine.dispose()


@pytest.fixture
def steps() -> Iterator[StandInSteps]:
    standin = StandInSteps()
    yield standin
    standin.cleanup()


def fleet(ctl: Controller, count: int) -> list[str]:
    names = [f"n{i}" for i in range(1, count + 1)]
    for name in names:
        enroll(ctl, name)
    return names


def make_engine(ctl: Controller, steps: StandInSteps, owner: str = "replica-a",
                **options: Any) -> RecoveryEngine:
    rails = options.pop("rails", GuardRails())
    return RecoveryEngine.from_controller(ctl, steps, rails, TOKEN_COMMAND, owner=owner,
                                          **options)


def drive(engine: RecoveryEngine, job_id: str, state: JobState, ticks: int = 20) -> dict:
    for _ in range(ticks):
        engine.tick()
        job = engine.store.get(job_id)
        if job["state"] == state:
            return job
    raise AssertionError(f"job {job_id} is {job['state']}, not {state}: {job}")


def only_job(engine: RecoveryEngine, node: str) -> dict:
    jobs = engine.store.list(node_id=node)
    assert len(jobs) == 1, jobs
    return jobs[0]


def test_a_job_goes_through_every_state_each_on_the_ledger(ctl: Controller,
                                                            steps: StandInSteps) -> None:
    fleet(ctl, 3)
    steps.on_enroll = lambda node: enroll(ctl, node)
    old = ctl.nodes.get("n2")
    quarantine(ctl, "n2")
    with db.transaction(ctl.engine) as conn:  # secrets n2 fetched (reported after the quarantine)
        conn.execute(tables.secret_grants.insert().values(
            node_id="n2", order_id="o-1", approle="aegis-web", accessor="acc-n2",
            leases="[]", logins="[]", expires_at=int(time.time()) + 600,
            fetched_at=int(time.time())))
    engine = make_engine(ctl, steps)
    done = engine.tick()
    job = only_job(engine, "n2")
    assert done["queued"] == [job["job_id"]] and done["started"] == [job["job_id"]]
    job = drive(engine, job["job_id"], JobState.TRUSTED)

    assert steps.steps_called("n2") == ["contain", "collect", "replace", "verify", "enroll"]
    assert steps.token_commands == [TOKEN_COMMAND]
    node = ctl.nodes.get("n2")
    assert node["state"] == NodeState.TRUSTED
    assert node["cert_serial"] != old["cert_serial"]
    assert node["identity_key"] != old["identity_key"]
    assert job["data"]["old_cert_serial"] == old["cert_serial"]
    assert job["data"]["new_cert_serial"] == node["cert_serial"]
    assert job["data"]["new_instance_id"] == "standin-n2-new"
    assert job["started_at"] is not None and job["ended_at"] is not None
    assert json.loads(node["profile"])["golden"] == {"/etc/aegis/standin": "0" * 64}
    with pytest.raises(Unauthenticated, match="was replaced"):  # the old certificate
        ctl.enrollment.current_certificate("n2", int(old["cert_serial"], 16))
    ctl.enrollment.current_certificate("n2", int(node["cert_serial"], 16))
    with db.reader(ctl.engine) as conn:  # the rebuild asked for the old node's secrets to go
        grant = conn.execute(sa.select(tables.secret_grants)).one()
    assert grant.revoke_requested_at is not None
    assert grant.revoke_reason.startswith("node quarantined -> rebuilding: recovery job")

    records = list(ctl.ledger.records())
    rebuild = [r.body for r in records if r.kind == Kind.REBUILD]
    moves = [(b["from"], b["to"]) for b in rebuild if b["event"] == "transition"]
    assert rebuild[0]["event"] == "job_created"
    assert moves == [("queued", "containing"), ("containing", "collecting"),
                     ("collecting", "replacing"), ("replacing", "verifying"),
                     ("verifying", "enrolling"), ("enrolling", "trusted")]
    bundle = next(b for b in rebuild if b["event"] == "forensics_collected")
    revoked = next(b for b in rebuild if b["event"] == "credentials_revoked")
    assert (revoked["cert_serial"], revoked["identity_key"]) == (old["cert_serial"],
                                                                 old["identity_key"])
    assert len(bundle["bundle_sha256"]) == 64 and bundle["bundle_bytes"] == 4096
    node_moves = [(r.body["from"], r.body["to"]) for r in records
                  if r.kind == Kind.STATE_CHANGE and r.subject == "n2"]
    assert node_moves[-4:] == [("trusted", "quarantined"), ("quarantined", "rebuilding"),
                               ("rebuilding", "enrolled"), ("enrolled", "trusted")]
    assert any(r.kind == Kind.ATTESTATION and r.subject == "n2"
               and r.body.get("event") == "expected_profile_set" for r in records)
    assert ctl.ledger.verify().ok

    history = engine.store.history(job["job_id"])
    assert [h["seq"] for h in history] == list(range(1, len(history) + 1))
    assert any("stand-in collect of n2" in h["message"] for h in history)
    assert history[-1]["state"] == "trusted"
    engine.tick()  # a trusted node: no new job
    assert len(engine.store.list(node_id="n2")) == 1


@pytest.mark.parametrize(("step", "node_state"), [("collect", NodeState.QUARANTINED),
                                                  ("replace", NodeState.REBUILDING)])
def test_a_step_error_fails_the_job_and_never_puts_the_node_in_service(
        ctl: Controller, steps: StandInSteps, step: str, node_state: NodeState) -> None:
    fleet(ctl, 3)
    quarantine(ctl, "n1")
    steps.fail[step] = "terraform apply: Error: instance quota exceeded"
    engine = make_engine(ctl, steps)
    engine.tick()
    job = drive(engine, only_job(engine, "n1")["job_id"], JobState.FAILED)
    assert job["error"] == f"{step}: terraform apply: Error: instance quota exceeded"
    assert job["failed_step"] == {"collect": "collecting", "replace": "replacing"}[step]
    node = ctl.nodes.get("n1")
    assert node["state"] == node_state  # quarantined, or rebuilding: never in service
    if node_state == NodeState.REBUILDING:  # the old machine's credentials are refused
        assert (node["cert_serial"], node["identity_key"]) == (None, None)
        with pytest.raises(Unauthenticated):
            ctl.enrollment.current_certificate("n1", int(job["data"]["old_cert_serial"], 16))
    engine.tick()  # a failed job is not retried automatically (an operator starts a new one)
    assert len(engine.store.list(node_id="n1")) == 1
    failed = [r.body for r in ctl.ledger.records()
              if r.kind == Kind.REBUILD and r.body.get("to") == "failed"]
    assert failed and failed[0]["failed_step"] == job["failed_step"]
    assert ctl.ledger.verify().ok


def test_unknown_or_unquarantined_nodes_are_refused_and_no_job_is_written(
        ctl: Controller, steps: StandInSteps) -> None:
    fleet(ctl, 2)
    engine = make_engine(ctl, steps)
    with pytest.raises(NotFound, match="no node 'ghost'"):
        engine.store.create("ghost", actor="operator:alice")
    with pytest.raises(Conflict, match="node 'n1' is trusted, not quarantined"):
        engine.store.create("n1", actor="operator:alice")
    assert engine.store.list() == []
    quarantine(ctl, "n1")
    job = engine.store.create("n1", actor="operator:alice")
    with pytest.raises(Conflict, match=f"already has recovery job {job['job_id']}"):
        engine.store.create("n1", actor="operator:alice")
    with pytest.raises(NotFound, match="no recovery job 'nope'"):
        engine.store.get("nope")


def test_a_quarantine_storm_trips_the_breaker_and_approvals_go_one_at_a_time(
        ctl: Controller, steps: StandInSteps) -> None:
    nodes = fleet(ctl, 5)
    steps.on_enroll = lambda node: enroll(ctl, node)
    for node in nodes[:4]:
        quarantine(ctl, node)
    engine = make_engine(ctl, steps)
    done = engine.tick()
    assert len(done["queued"]) == 4 and done["started"] == []
    jobs = engine.store.list()
    assert all(j["state"] == JobState.AWAITING_APPROVAL for j in jobs)
    for job in jobs:
        assert job["reason"].startswith("circuit breaker: 4 nodes quarantined within 600 s")
        assert f"`aegis-controller recovery approve {job['job_id']}`" in job["reason"]
    assert steps.calls == []
    for job in jobs:
        engine.store.approve(job["job_id"], "operator:alice")
    in_flight_seen = 0
    for _ in range(80):
        engine.tick()
        now = engine.store.list()
        in_flight_seen = max(in_flight_seen, sum(j["state"] in IN_FLIGHT for j in now))
        if all(j["state"] == JobState.TRUSTED for j in now):
            break
    assert in_flight_seen == 1
    finished = sorted(engine.store.list(), key=lambda j: j["started_at"])
    assert [j["state"] for j in finished] == ["trusted"] * 4
    assert all(j["approved_by"] == "operator:alice" for j in finished)
    for before, after in itertools.pairwise(finished):  # each starts once the last is trusted
        assert after["started_at"] >= before["ended_at"]
    assert ctl.ledger.verify().ok


def test_a_node_quarantined_again_within_the_cooldown_is_not_replaced_again(
        ctl: Controller, steps: StandInSteps) -> None:
    fleet(ctl, 3)
    steps.on_enroll = lambda node: enroll(ctl, node)
    quarantine(ctl, "n3")
    engine = make_engine(ctl, steps)
    engine.tick()
    drive(engine, only_job(engine, "n3")["job_id"], JobState.TRUSTED)
    calls = len(steps.calls)
    quarantine(ctl, "n3")
    engine.tick()
    again = [j for j in engine.store.list(node_id="n3") if j["state"] != JobState.TRUSTED]
    assert [j["state"] for j in again] == [JobState.AWAITING_APPROVAL]
    assert "quarantined again" in again[0]["reason"]
    assert "not replaced again automatically" in again[0]["reason"]
    engine.tick()
    assert len(steps.calls) == calls  # no step ran for it
    assert ctl.nodes.get("n3")["state"] == NodeState.QUARANTINED


def _start_job(ctl: Controller, node: str) -> dict:
    quarantine(ctl, node)
    engine_store = make_engine(ctl, StandInSteps()).store
    job = engine_store.create(node, actor="test")
    return engine_store.move(job["job_id"], JobState.CONTAINING, "guard rails clear",
                             actor="test")


def test_an_expired_lease_is_taken_over_and_the_old_owners_writes_are_fenced(
        ctl: Controller) -> None:
    fleet(ctl, 3)
    job = _start_job(ctl, "n1")
    store = make_engine(ctl, StandInSteps()).store
    t = time.time()
    a, _ = store.claim("replica-a", 5, now=t)
    assert store.claim("replica-b", 5, now=t + 1) is None  # still a's
    b, seen = store.claim("replica-b", 5, now=t + 6)  # expired: b takes it over
    assert b.generation == a.generation + 1 and seen["previous_owner"] == "replica-a"
    for write in (lambda: store.progress(a, "late line", {}),
                  lambda: store.renew(a, 5),
                  lambda: store.update_data(a, {"x": 1}),
                  lambda: store.move(job["job_id"], JobState.COLLECTING, "contain done",
                                     actor="a", lease=a)):
        with pytest.raises(LeaseLost, match="lost to replica-b"):
            write()
    store.progress(b, "b's line", {})
    assert store.get(job["job_id"])["state"] == JobState.CONTAINING
    assert [h["message"] for h in store.history(job["job_id"])][-1] == "b's line"


def test_two_replicas_on_postgresql_never_run_one_job_at_once_and_a_lost_lease_stops_a_step(
        pg_url: str, tmp_path: Path, steps: StandInSteps) -> None:
    """Several replicas share a PostgreSQL database (SQLite serves one replica)."""
    init_keys(tmp_path / "keys")
    ctl = _open(tmp_path, pg_url)
    other = _open(tmp_path, pg_url)  # the second replica: its own connections
    try:
        fleet(ctl, 3)
        steps.on_enroll = lambda node: enroll(ctl, node)
        quarantine(ctl, "n1")
        a = make_engine(ctl, steps, "replica-a", lease_s=1.0)
        b = make_engine(other, steps, "replica-b", lease_s=1.0)
        gate = steps.block("contain")
        runner = threading.Thread(target=a.tick)
        runner.start()
        assert gate.entered.wait(30)
        time.sleep(2.5)  # more than the lease: a renews it while its step runs
        assert b.tick()["ran"] == []
        # now b's clock is far ahead: a's lease looks expired, b takes the job over and a's
        # renewal finds it lost: a's step is cancelled and a writes nothing more
        job_id = only_job(a, "n1")["job_id"]
        lease, _ = b.store.claim("replica-b", 60, now=time.time() + 30)
        runner.join(30)
        assert not runner.is_alive()
        job = a.store.get(job_id)
        assert (job["state"], job["lease_owner"]) == (JobState.CONTAINING, "replica-b")
        b.store.release(lease)
        gate.release.set()
        stop = threading.Event()

        def loop(engine: RecoveryEngine) -> None:
            while not stop.is_set():
                engine.tick()

        threads = [threading.Thread(target=loop, args=(e,)) for e in (a, b)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 60
        while a.store.get(job_id)["state"] != JobState.TRUSTED:
            assert time.monotonic() < deadline, a.store.get(job_id)
            time.sleep(0.05)
        stop.set()
        for thread in threads:
            thread.join(30)
        assert steps.most_at_once[job_id] == 1
        assert steps.steps_called("n1").count("replace") == 1
        assert ctl.ledger.verify().ok
    finally:
        other.engine.dispose()
        ctl.engine.dispose()


def test_a_resumed_step_kills_the_previous_attempts_process_group(
        ctl: Controller, steps: StandInSteps) -> None:
    fleet(ctl, 3)
    quarantine(ctl, "n2")
    a = make_engine(ctl, steps, "replica-a", lease_s=2.0)
    a.tick()  # queued -> containing -> collecting
    steps.spawn.add("collect")
    steps.crash.add("collect")
    with pytest.raises(SimulatedCrash):
        a.tick()  # collect starts `sleep` in its own process group, then "the controller dies"
    job = only_job(a, "n2")
    [record] = job["step_pgids"]
    leftover = steps.procs[0]
    assert record["pgid"] == leftover.pid and group_members(leftover.pid) == [leftover.pid]
    steps.spawn.clear()
    b = make_engine(ctl, steps, "replica-b")
    b.tick(now=time.time() + 10)  # a's lease has expired: b resumes the collect step
    assert leftover.wait(timeout=10) == -15  # SIGTERM: gone before the step ran again
    assert group_members(leftover.pid) == []
    job = b.store.get(job["job_id"])
    assert job["state"] == JobState.REPLACING and job["step_pgids"] == []
    assert steps.steps_called("n2") == ["contain", "collect", "collect"]
    lines = [h["message"] for h in b.store.history(job["job_id"])]
    assert any(f"process group {leftover.pid} of the previous attempt" in line
               and "killed (SIGTERM)" in line for line in lines)
    assert os.getpgid(0) != leftover.pid


def test_what_a_step_remembers_reaches_its_resumed_attempt(
        ctl: Controller, steps: StandInSteps) -> None:
    """A replace killed after Terraform destroyed the old instance: the old id the step
    remembered before it applied is in the job's data when another replica resumes it."""
    fleet(ctl, 3)
    quarantine(ctl, "n2")
    a = make_engine(ctl, steps, "replica-a", lease_s=2.0)
    for _ in range(3):
        if only_job(a, "n2")["state"] == JobState.REPLACING if a.store.list() else False:
            break
        a.tick()  # -> containing -> collecting -> replacing
    assert only_job(a, "n2")["state"] == JobState.REPLACING
    steps.remember["replace"] = {"old_instance_id": "i-old"}
    steps.crash.add("replace")
    with pytest.raises(SimulatedCrash):
        a.tick()
    assert only_job(a, "n2")["data"]["old_instance_id"] == "i-old"
    del steps.remember["replace"]
    b = make_engine(ctl, steps, "replica-b")
    b.tick(now=time.time() + 10)  # a's lease has expired
    assert [d for s, d in steps.seen if s == "replace"][-1]["old_instance_id"] == "i-old"
    assert only_job(b, "n2")["state"] == JobState.VERIFYING


def test_the_background_loop_runs_jobs_and_stop_cancels_a_running_step(
        ctl: Controller, steps: StandInSteps) -> None:
    fleet(ctl, 3)
    steps.on_enroll = lambda node: enroll(ctl, node)
    engine = make_engine(ctl, steps, poll_s=0.05)
    gate = steps.block("verify")
    quarantine(ctl, "n1")
    engine.start()
    try:
        engine.wake()
        assert gate.entered.wait(30)
    finally:
        engine.stop()
    job = only_job(engine, "n1")
    assert (job["state"], job["lease_owner"]) == (JobState.VERIFYING, None)  # released
    assert job["error"] is None
    assert engine.store.history(job["job_id"])[-1]["message"] == (
        "verify step cancelled (stand-in verify cancelled): resumed later, by this replica or "
        "another")
    gate.release.set()
    engine.start()  # a restart resumes the job where it was
    try:
        deadline = time.monotonic() + 60
        while engine.store.get(job["job_id"])["state"] != JobState.TRUSTED:
            assert time.monotonic() < deadline, engine.store.get(job["job_id"])
            time.sleep(0.05)
    finally:
        engine.stop()
    assert steps.steps_called("n1") == ["contain", "collect", "replace", "verify", "verify",
                                        "enroll"]


@pytest.mark.parametrize(("step", "result", "error", "node_state"), [
    ("collect", {"bundle_path": "/tmp/x"}, "collect: the step returned no bundle_sha256",
     NodeState.QUARANTINED),
    ("verify", {"golden": "{not json"}, "verify: golden record of the new n1: neither an "
     "expected profile nor a golden record", NodeState.REBUILDING),
    ("verify", {}, "verify: the verify step returned no golden record", NodeState.REBUILDING),
    ("replace", {"new_instance_id": object()}, "replace: the step returned data that is not "
     "a JSON object", NodeState.REBUILDING),
])
def test_a_step_result_the_engine_cannot_use_fails_the_job(
        ctl: Controller, steps: StandInSteps, step: str, result: dict, error: str,
        node_state: NodeState) -> None:
    fleet(ctl, 3)
    steps.results[step] = result
    quarantine(ctl, "n1")
    engine = make_engine(ctl, steps)
    engine.tick()
    job = drive(engine, only_job(engine, "n1")["job_id"], JobState.FAILED)
    assert job["error"].startswith(error)
    assert ctl.nodes.get("n1")["state"] == node_state


def test_a_replacement_not_trusted_in_time_or_found_suspect_fails_the_job(
        ctl: Controller, steps: StandInSteps) -> None:
    fleet(ctl, 4)
    quarantine(ctl, "n1")
    engine = make_engine(ctl, steps, enroll_timeout_s=300)
    engine.tick()
    job = drive(engine, only_job(engine, "n1")["job_id"], JobState.ENROLLING)
    for _ in range(3):  # nothing enrolled: it waits, re-checked each tick
        engine.tick()
    assert engine.store.get(job["job_id"])["state"] == JobState.ENROLLING
    engine.tick(now=time.time() + 301)
    job = engine.store.get(job["job_id"])
    assert job["state"] == JobState.FAILED and job["failed_step"] == JobState.ENROLLING
    assert job["error"] == ("enroll: the replacement was not attested trusted within 300 s "
                            "(node is rebuilding, with its old certificate or key)")
    assert ctl.nodes.get("n1")["state"] == NodeState.REBUILDING

    def enrolls_badly(node: str) -> None:  # the new machine measures wrong
        token = ctl.enrollment.issue_token(node, actor="test")
        ctl.enrollment.enroll(enroll_request(node, token), "10.8.0.1:4433")
        ctl.nodes.move(node, transition(NodeState.ENROLLED, NodeState.SUSPECT,
                                        "attestation mismatch: golden /usr/bin/x"), "test")

    steps.on_enroll = enrolls_badly
    quarantine(ctl, "n2")
    engine.tick()
    held = only_job(engine, "n2")  # the failed replacement stopped automatic rebuilds
    assert held["state"] == JobState.AWAITING_APPROVAL
    assert "the previous replacement (job " in held["reason"]
    engine.store.approve(held["job_id"], "operator:alice")
    job = drive(engine, held["job_id"], JobState.FAILED)
    assert job["error"] == ("enroll: the replacement is suspect (attestation mismatch: "
                            "golden /usr/bin/x)")


def test_a_queued_job_whose_node_an_operator_released_fails(
        ctl: Controller, steps: StandInSteps) -> None:
    fleet(ctl, 3)
    quarantine(ctl, "n1")
    engine = make_engine(ctl, steps)
    job = engine.store.create("n1", actor="operator:alice")
    ctl.nodes.move("n1", transition(NodeState.QUARANTINED, NodeState.TRUSTED,
                                    "false positive", operator=True), "operator:alice")
    engine.tick()
    job = engine.store.get(job["job_id"])
    assert job["state"] == JobState.FAILED
    assert job["error"] == "node n1 is trusted, no longer quarantined: nothing to recover"
    assert steps.calls == []


def test_two_replicas_on_postgresql_start_one_replacement_at_a_time(
        pg_url: str, tmp_path: Path, steps: StandInSteps) -> None:
    """Both replicas judge and run jobs at once: the decision lock keeps the guard rails'
    max_in_flight (1) across them, so the second replacement starts after the first is
    trusted."""
    init_keys(tmp_path / "keys")
    ctl = _open(tmp_path, pg_url)
    other = _open(tmp_path, pg_url)
    stop = threading.Event()
    threads: list[threading.Thread] = []
    try:
        fleet(ctl, 6)
        steps.on_enroll = lambda node: enroll(ctl, node)
        quarantine(ctl, "n1")
        quarantine(ctl, "n2")
        engines = [make_engine(ctl, steps, "replica-a"), make_engine(other, steps, "replica-b")]

        def loop(engine: RecoveryEngine) -> None:
            while not stop.is_set():
                engine.tick()

        threads = [threading.Thread(target=loop, args=(e,)) for e in engines]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 90
        most = 0
        while True:
            jobs = engines[0].store.list()
            most = max(most, sum(j["state"] in IN_FLIGHT for j in jobs))
            if len(jobs) == 2 and all(j["state"] == JobState.TRUSTED for j in jobs):
                break
            assert time.monotonic() < deadline, jobs
            time.sleep(0.02)
        stop.set()
        for thread in threads:
            thread.join(30)
        first, second = sorted(jobs, key=lambda j: j["started_at"])
        assert most == 1 and second["started_at"] >= first["ended_at"]
        assert all(n == 1 for n in steps.most_at_once.values())
        assert sorted(steps.steps_called()).count("replace") == 2
        assert ctl.ledger.verify().ok
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
        other.engine.dispose()
        ctl.engine.dispose()


def test_the_schema_keeps_one_active_job_per_node_and_matches_the_tables(
        ctl: Controller) -> None:
    """Migration 0007 on this database: what tables.py declares (compare_metadata), and the
    partial unique index refuses a second active job of a node even past the store."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    with ctl.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(
            conn, opts={"compare_type": True}), db.metadata)
    assert diff == []
    row = {"node_id": "n1", "cause": "compromised", "reason": "r", "flagged_at": 1.0,
           "data": "{}", "step_pgids": "[]", "created_at": 1.0, "updated_at": 1.0}
    with db.transaction(ctl.engine) as conn:
        conn.execute(tables.recovery_jobs.insert(), [
            {**row, "job_id": "j1", "state": "failed"}, {**row, "job_id": "j2", "state": "trusted"},
            {**row, "job_id": "j3", "state": "enrolling"}])
    with pytest.raises(sa.exc.IntegrityError), db.transaction(ctl.engine) as conn:
        conn.execute(tables.recovery_jobs.insert().values(**row, job_id="j4", state="queued"))


@pytest.mark.parametrize("max_in_flight", [3, 1])
def test_the_loop_runs_the_steps_of_the_jobs_in_flight_at_once(
        ctl: Controller, steps: StandInSteps, max_in_flight: int) -> None:
    """Each job the guard rails let be in flight has its step run by a worker of its own:
    with max_in_flight 3 three replacements are in a step at the same time; with 1 only one,
    and the next starts only once the previous one is attested trusted. stop() cancels and
    joins every worker."""
    fleet(ctl, 9)
    steps.on_enroll = lambda node: enroll(ctl, node)
    victims = ["n1", "n2", "n3"]
    for node in victims:
        quarantine(ctl, node)
    rails = GuardRails(max_in_flight=max_in_flight, breaker_threshold=5)
    engine = make_engine(ctl, steps, rails=rails, poll_s=0.05)
    gate = steps.block("contain")

    def in_a_step() -> int:
        with steps._lock:
            return sum(steps.running.values())

    engine.start()
    try:
        engine.wake()
        deadline = time.monotonic() + 30
        while in_a_step() < max_in_flight:
            assert time.monotonic() < deadline, (steps.running, engine.store.list())
            time.sleep(0.02)
        time.sleep(0.5)  # the loop ticks ten times more: nothing else starts
        assert in_a_step() == max_in_flight
        assert len(engine.workers()) == max_in_flight
        jobs = engine.store.list()
        assert sum(j["state"] in IN_FLIGHT for j in jobs) == max_in_flight
        assert sum(j["state"] == JobState.QUEUED for j in jobs) == 3 - max_in_flight
        if max_in_flight == 3:  # stop() cancels all three steps and joins their workers
            engine.stop()
            assert in_a_step() == 0 and engine.workers() == []
            for job in engine.store.list():
                assert (job["state"], job["lease_owner"]) == (JobState.CONTAINING, None)
                assert engine.store.history(job["job_id"])[-1]["message"].startswith(
                    "contain step cancelled")
            engine.start()
        gate.release.set()
        deadline = time.monotonic() + 90
        while not all(j["state"] == JobState.TRUSTED for j in engine.store.list()):
            assert time.monotonic() < deadline, engine.store.list()
            time.sleep(0.05)
    finally:
        gate.release.set()
        engine.stop()
    finished = sorted(engine.store.list(), key=lambda j: j["started_at"])
    assert sorted(j["node_id"] for j in finished) == victims
    assert all(n == 1 for n in steps.most_at_once.values())  # one step of a job at a time
    for node in victims:
        assert steps.steps_called(node).count("replace") == 1
    if max_in_flight == 1:  # each starts once the previous one is trusted
        for before, after in itertools.pairwise(finished):
            assert after["started_at"] >= before["ended_at"]
    assert ctl.ledger.verify().ok


def test_a_transition_is_recorded_at_the_time_its_step_ended(ctl: Controller,
                                                             steps: StandInSteps) -> None:
    """The history's times are the report's (and the demo's timeline's) source: a state
    entered when a step finished carries the time it finished, not the time the step was
    claimed (they were the claim's time, so a 100 s step looked like 0 s)."""
    fleet(ctl, 3)
    steps.on_enroll = lambda node: enroll(ctl, node)
    quarantine(ctl, "n2")
    gate = steps.block("contain")
    engine = make_engine(ctl, steps)
    ticker = threading.Thread(target=engine.tick)
    ticker.start()
    try:
        assert gate.entered.wait(30)
        time.sleep(1.5)
        released = time.time()
        gate.release.set()
    finally:
        ticker.join(60)
    job = only_job(engine, "n2")
    history = engine.store.history(job["job_id"])
    moved = [h for h in history if h["message"].startswith("containing -> collecting")]
    assert moved, [h["message"] for h in history]
    started = next(h for h in history if h["message"] == "contain step started")
    assert moved[0]["at"] >= released > started["at"] + 1.4
    job = drive(engine, job["job_id"], JobState.TRUSTED)
    assert job["ended_at"] >= moved[0]["at"]
