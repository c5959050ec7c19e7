"""The recovery engine with the AWX backend (``backend: awx``): real engine, real database
(SQLite), real node store and ledger, real HTTP on loopback to the AWX STAND-IN
(tests/awx_standin.py: AWX itself cannot run here; the stand-in's recovery templates only
hand back what each step must, no machine is touched). The "new machine" enrolls for real
through the controller's store, as in the engine's tests."""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import awx_standin
import pytest
import yaml
from awx_standin import StandInAwx, serve_standin
from harness_domain import enroll_trusted as enroll
from harness_domain import make_controller, quarantine

from aegis_controller.domain import Controller
from aegis_controller.ledger import Kind
from aegis_controller.nodes import NodeState
from aegis_controller.recovery.awx_steps import AwxSteps
from aegis_controller.recovery.backends import make_steps
from aegis_controller.recovery.engine import RecoveryEngine
from aegis_controller.recovery.settings import RecoverySettings
from aegis_controller.recovery.states import JobState
from aegis_controller.recovery.steps import StepContext, StepError
from aegis_controller.recovery.store import LeaseLost

pytestmark = pytest.mark.integration

TOKEN_COMMAND = ["aegis-controller", "token", "issue", "--ttl", "600"]
TEMPLATES = {"contain": "aegis-contain", "collect": "aegis-collect", "replace": 23,
             "verify": "aegis-verify", "enroll": "aegis-enroll"}
ORDER = ["aegis-contain", "aegis-collect", "aegis-replace", "aegis-verify", "aegis-enroll"]
BIN = Path(sys.executable).parent / "aegis-controller"


@pytest.fixture
def awx() -> Iterator[tuple[StandInAwx, str]]:
    with serve_standin() as served:
        yield served


@pytest.fixture
def ctl(tmp_path: Path) -> Iterator[Controller]:
    controller = make_controller(tmp_path)
    for node in ("n1", "n2", "n3"):
        enroll(controller, node)
    yield controller
    controller.engine.dispose()


def write_settings(base: Path, url: str, **awx: object) -> Path:
    token = base / "awx.token"
    token.write_text(awx_standin.TOKEN + "\n")
    token.chmod(0o600)
    path = base / "recovery.yml"
    path.write_text(yaml.safe_dump({
        "backend": "awx", "guard_rails": {"max_in_flight": 1}, "enroll_timeout_s": 30,
        "awx": {"url": url, "token_file": "awx.token", "templates": TEMPLATES,
                "timeout_s": 30, "poll_s": 0.01, **awx}}))
    return path


def engine_of(ctl: Controller, settings_path: Path, **options: object) -> RecoveryEngine:
    settings = RecoverySettings.load(settings_path)
    steps = make_steps(settings, runs_dir=settings_path.parent / "runs")
    assert isinstance(steps, AwxSteps)
    return RecoveryEngine.from_controller(ctl, steps, settings.guard_rails, TOKEN_COMMAND,
                                          owner="replica-a", **options)


def run_to_the_end(engine: RecoveryEngine, ctl: Controller, node: str) -> dict:
    """Tick until the job ends; the new machine enrolls once the enroll step ran."""
    for _ in range(30):
        engine.tick()
        [job] = [j for j in engine.store.list(node_id=node)]
        if job["state"] in (JobState.TRUSTED, JobState.FAILED):
            return job
        if (job["state"] == JobState.ENROLLING and "enroll_ran_at" in job["data"]
                and ctl.nodes.get(node)["state"] == NodeState.REBUILDING):
            enroll(ctl, node)
    raise AssertionError(engine.store.list(node_id=node))


def test_a_whole_job_runs_through_awx_job_templates(
        ctl: Controller, awx: tuple[StandInAwx, str], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    standin, url = awx
    caplog.set_level(logging.DEBUG)
    engine = engine_of(ctl, write_settings(tmp_path, url))
    old = ctl.nodes.get("n2")
    quarantine(ctl, "n2")
    job = run_to_the_end(engine, ctl, "n2")
    assert job["state"] == JobState.TRUSTED, job
    job_id = job["job_id"]

    # the templates launched in order, each with the node and the job's data
    launched = standin.launched()
    assert [name for name, _ in launched] == ORDER
    for (name, extra), step in zip(launched, TEMPLATES, strict=True):
        assert extra["aegis_target"] == "n2", name
        assert (extra["aegis_recovery_job"], extra["aegis_recovery_step"]) == (job_id, step)
        assert extra["aegis_recovery_attempt"] >= 1
        assert extra["aegis_recovery_data"]["old_cert_serial"] == old["cert_serial"]
    extras = dict(launched)
    assert extras["aegis-collect"]["forensics_incident"] == job_id
    assert extras["aegis-enroll"]["agent_bootstrap_token_command"] == shlex.join(TOKEN_COMMAND)
    verify_data = extras["aegis-verify"]["aegis_recovery_data"]  # what earlier steps returned
    assert verify_data["new_instance_id"] == "awx-n2-new"
    assert verify_data["bundle_sha256"] == awx_standin.recovery_result(
        "aegis-collect", "n2", {"forensics_incident": job_id})["bundle_sha256"]
    ids = sorted(standin.jobs)
    assert [verify_data[f"awx_{s}_job"] for s in ("contain", "collect", "replace")] == ids[:3]

    # the steps' results reached the engine: instance ids, the bundle, the golden profile
    node = ctl.nodes.get("n2")
    assert node["state"] == NodeState.TRUSTED and node["cert_serial"] != old["cert_serial"]
    profile = json.loads(node["profile"])
    assert profile["golden"] == json.loads(awx_standin.GOLDEN)["golden"]
    assert job["data"]["new_instance_id"] == "awx-n2-new"
    assert job["data"]["awx_enroll_job"] == ids[4]
    bundle = next(r.body for r in ctl.ledger.records()
                  if r.kind == Kind.REBUILD and r.body.get("event") == "forensics_collected")
    assert bundle["bundle_bytes"] == 8192
    assert bundle["bundle_path"] == f"/var/lib/awx/forensics/n2-{job_id}.tar.age"

    # each AWX job's events streamed into the job's history, in order
    history = engine.store.history(job_id)
    messages = [h["message"] for h in history]
    for awx_job, name in zip(ids, ORDER, strict=True):
        assert f"AWX job {awx_job} launched from job template {name!r}" in messages or (
            name == "aegis-replace"
            and f"AWX job {awx_job} launched from job template 23" in messages)
        lines = [h for h in history if h["fields"].get("awx_job") == awx_job
                 and h["message"].startswith(f"[awx {awx_job}]")]
        assert [h["message"] for h in lines] == [
            f"[awx {awx_job}] play {name!r}",
            f"[awx {awx_job}] task 'task 2' on n2: ok",
            f"[awx {awx_job}] task 'task 3' on n2: changed"], lines
        assert [h["fields"]["event"] for h in lines] == [
            "playbook_on_play_start", "runner_on_ok", "runner_on_ok"]
        assert f"AWX job {awx_job} successful (7 events)" in messages
    assert ctl.ledger.verify().ok

    # the token is sent to AWX only: not in the history, the data, the ledger or the logs
    token = awx_standin.TOKEN
    assert token not in json.dumps(history) and token not in json.dumps(job)
    assert all(token not in json.dumps(r.body) for r in ctl.ledger.records())
    assert token not in caplog.text and token not in json.dumps(extras)
    assert token not in repr(engine.steps.settings)


def test_a_failed_template_fails_the_job_with_awxs_error(
        ctl: Controller, awx: tuple[StandInAwx, str], tmp_path: Path) -> None:
    standin, url = awx
    standin.fail["aegis-replace"] = "terraform apply: Error: instance quota exceeded"
    engine = engine_of(ctl, write_settings(tmp_path, url))
    quarantine(ctl, "n1")
    job = run_to_the_end(engine, ctl, "n1")
    awx_job = max(standin.jobs)
    assert (job["state"], job["failed_step"]) == (JobState.FAILED, JobState.REPLACING)
    assert job["error"] == (f"replace: AWX job {awx_job} (job template 23) failed: task "
                            "'task 3' on n1: failed: terraform apply: Error: instance quota "
                            "exceeded")
    assert [name for name, _ in standin.launched()] == ORDER[:3]
    assert ctl.nodes.get("n1")["state"] == NodeState.REBUILDING  # never in service
    lines = [h["message"] for h in engine.store.history(job["job_id"])]
    assert (f"[awx {awx_job}] task 'task 3' on n1: failed: terraform apply: Error: instance "
            "quota exceeded") in lines


def test_a_cancelled_step_cancels_its_awx_job_and_the_resumed_step_launches_again(
        ctl: Controller, awx: tuple[StandInAwx, str], tmp_path: Path) -> None:
    standin, url = awx
    standin.hold.add("aegis-verify")
    engine = engine_of(ctl, write_settings(tmp_path, url), poll_s=0.05)
    quarantine(ctl, "n3")

    def verify_running() -> int | None:
        found = [j for j in standin.jobs.values()
                 if standin.TEMPLATES[j.template] == "aegis-verify" and j.polls >= 3]
        return found[0].id if found else None

    engine.start()
    try:
        engine.wake()
        deadline = time.monotonic() + 30
        while verify_running() is None:
            assert time.monotonic() < deadline, engine.store.list()
            time.sleep(0.02)
    finally:
        engine.stop()
    held = verify_running()
    assert held is not None and standin.jobs[held].canceled
    assert ("POST", f"/api/v2/jobs/{held}/cancel/", {}) in standin.requests
    [job] = engine.store.list(node_id="n3")
    assert (job["state"], job["lease_owner"], job["error"]) == (JobState.VERIFYING, None, None)
    assert job["data"]["awx_verify_job"] == held  # remembered as soon as it was launched
    assert engine.store.history(job["job_id"])[-1]["message"] == (
        f"verify step cancelled (AWX job {held} canceled): resumed later, by this replica "
        "or another")

    standin.hold.clear()  # a restarted controller launches the template again
    restarted = engine_of(ctl, tmp_path / "recovery.yml")
    job = run_to_the_end(restarted, ctl, "n3")
    assert job["state"] == JobState.TRUSTED
    assert [n for n, _ in standin.launched()] == [*ORDER[:4], "aegis-verify", "aegis-enroll"]
    messages = [h["message"] for h in restarted.store.history(job["job_id"])]
    assert (f"AWX job {held} of a previous attempt ended canceled: launching the job "
            "template again") in messages


def test_a_resumed_step_follows_the_awx_job_a_dead_attempt_launched(
        awx: tuple[StandInAwx, str], tmp_path: Path) -> None:
    """A controller killed while its AWX job ran: the resumed step waits for that job
    (remembered in the data) instead of launching a second one."""
    standin, url = awx
    standin.hold.add("aegis-verify")
    settings = RecoverySettings.load(write_settings(tmp_path, url))
    steps = AwxSteps(settings)
    from aegis_controller.awx import AwxClient

    with AwxClient(url, awx_standin.TOKEN) as client:
        running = client.launch("aegis-verify", {"aegis_target": "n2"})
        assert client.status(running)["status"] == "pending"
    standin.jobs[running].script = ["running", "running", "successful"]
    lines: list[str] = []
    ctx = StepContext(job_id="j-1", node_id="n2", generation=2,
                      data={"awx_verify_job": running},
                      progress=lambda message, **_: lines.append(message),
                      started_process=lambda _pgid: None)
    result = steps.verify(ctx)
    assert result == {"golden": awx_standin.GOLDEN, "awx_verify_job": running}
    assert list(standin.jobs) == [running]  # nothing launched again
    assert lines[0] == f"following AWX job {running} of a previous attempt (running)"

    standin.hold.clear()  # a job AWX no longer has: launched again
    lines.clear()
    ctx.data = {"awx_verify_job": 9999}
    assert steps.verify(ctx)["awx_verify_job"] == max(standin.jobs) != running
    assert lines[0] == ("AWX job 9999 of a previous attempt is gone from AWX: launching the "
                        "job template again")

    def lost(**_fields: object) -> None:
        raise LeaseLost("recovery job j-1: lease lost to replica-b")

    # the lease is lost as the launched job is to be remembered: the job is canceled
    standin.hold.add("aegis-contain")
    ctx = StepContext(job_id="j-1", node_id="n2", generation=2, data={}, remember=lost,
                      progress=lambda message, **_: lines.append(message),
                      started_process=lambda _pgid: None)
    with pytest.raises(LeaseLost):
        steps.contain(ctx)
    assert standin.jobs[max(standin.jobs)].canceled


def test_step_errors_name_the_problem_and_never_the_token(
        awx: tuple[StandInAwx, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, url = awx
    ctx = StepContext(job_id="j-1", node_id="n2", generation=1, data={},
                      progress=lambda *_a, **_k: None, started_process=lambda _pgid: None)
    path = write_settings(tmp_path, url)
    (tmp_path / "awx.token").write_text("wrong-token-77aa\n")
    steps = AwxSteps(RecoverySettings.load(path))
    with pytest.raises(StepError) as err:
        steps.contain(ctx)
    assert str(err.value).startswith("AWX find job template 'aegis-contain': HTTP 401")
    assert "wrong-token-77aa" not in str(err.value)
    (tmp_path / "awx.token").write_text("\n")
    with pytest.raises(StepError, match=r"awx.token_file .*awx.token is empty: put an AWX "
                                        "token there"):
        steps.contain(ctx)
    (tmp_path / "awx.token").unlink()
    env = yaml.safe_load(path.read_text())
    del env["awx"]["token_file"]
    env["awx"]["token_env"] = "AEGIS_TEST_AWX_TOKEN"  # noqa: S105 - a variable's name
    path.write_text(yaml.safe_dump(env))
    monkeypatch.delenv("AEGIS_TEST_AWX_TOKEN", raising=False)
    steps = AwxSteps(RecoverySettings.load(path))
    with pytest.raises(StepError, match=r"\$AEGIS_TEST_AWX_TOKEN is not set or empty"):
        steps.contain(ctx)
    monkeypatch.setenv("AEGIS_TEST_AWX_TOKEN", awx_standin.TOKEN)
    assert steps.contain(ctx)["quarantine_mode"] == "soft"


def test_dry_run_looks_the_templates_up_in_awx(
        ctl: Controller, awx: tuple[StandInAwx, str], tmp_path: Path) -> None:
    standin, url = awx
    quarantine(ctl, "n1")
    config = write_settings(tmp_path, url)
    env = {k: v for k, v in os.environ.items() if k != "AEGIS_CONTROLLER_DB"}

    def dry_run() -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN), "--state-dir", str(tmp_path), "recovery", "start",
                               "n1", "--dry-run", "--config", str(config)],
                              capture_output=True, text=True, timeout=120, env=env,
                              check=False)

    out = dry_run()
    assert out.returncode == 0, out.stderr
    assert "playbooks, in order:" in out.stdout
    for step, template, tid in (("contain", "'aegis-contain'", 21), ("replace", "23", 23),
                                ("enroll", "'aegis-enroll'", 25)):
        assert f"  {step}: AWX job template {template} (id {tid})" in out.stdout
    assert standin.jobs == {}  # nothing launched
    data = yaml.safe_load(config.read_text())
    data["awx"]["templates"]["verify"] = "no-such-template"
    config.write_text(yaml.safe_dump(data))
    out = dry_run()
    assert out.returncode == 2
    assert ("verify: AWX find job template 'no-such-template': no job template of that name"
            in out.stderr)
    assert awx_standin.TOKEN not in out.stderr + out.stdout
