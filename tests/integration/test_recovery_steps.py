"""The real recovery steps (``RunnerSteps``) against the real terraform binary and real
ansible-runner: a STAND-IN Terraform root module of terraform_data nodes
(tests/fixtures/tf_standin_fleet) and STAND-IN playbooks run on localhost
(tests/fixtures/standin_playbooks) that take the same vars as the collection's."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import sys
import tarfile
import threading
import time
from pathlib import Path

import pyrage
import pytest
import yaml
from harness_recovery import FIXTURES, standin_settings
from pyrage import x25519

from aegis_controller.recovery.runner_steps import RunnerSteps
from aegis_controller.recovery.settings import RecoverySettings
from aegis_controller.recovery.steps import StepContext, StepError
from aegis_controller.terraform import Terraform
from harness import PATHS, group_gone, wait_until

pytestmark = pytest.mark.integration

NODES = ["standin-n1", "standin-n2", "standin-n3"]
SECRET = "s3cret-token-4f1d9a7c"  # noqa: S105 (a test value)


def addr(node: str) -> str:
    return f'module.node["{node}"].terraform_data.node'


class Recorder:
    """A StepContext's callbacks, recorded."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, dict]] = []
        self.groups: list[int] = []
        self.remembered: dict = {}

    def remember(self, **fields) -> None:
        self.remembered.update(fields)

    def progress(self, message: str, **fields) -> None:
        self.lines.append((message, fields))

    def started(self, pgid: int) -> None:
        self.groups.append(pgid)

    def text(self) -> str:
        return "\n".join(f"{m} {json.dumps(f, default=str)}" for m, f in self.lines)


@pytest.fixture
def world(tmp_path):
    """Settings for the stand-in fleet (applied once) and the stand-in playbooks."""
    root = tmp_path / "module"
    shutil.copytree(FIXTURES / "tf_standin_fleet", root)
    markers = tmp_path / "markers"
    markers.mkdir()
    standin = tmp_path / "standin"
    standin.mkdir()
    identity = x25519.Identity.generate()
    var_file = tmp_path / "fleet.tfvars.json"
    var_file.write_text(json.dumps({"nodes": NODES, "marker_dir": str(markers)}))
    inventory = tmp_path / "inventory.yml"
    hostvars = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
                "standin_root": str(standin), "standin_golden": str(standin / "golden.json")}
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {
        "standin-n1": dict(hostvars),
        "standin-n2": {**hostvars, "standin_drift": True, "standin_broken": True},
        "standin-n3": dict(hostvars)}}}))
    (tmp_path / "agent-vars.yml").write_text("agent_controller_url: https://127.0.0.1:1\n")
    settings_file = tmp_path / "recovery.yml"
    settings_file.write_text(yaml.safe_dump(standin_settings(
        tmp_path, standin, str(identity.to_public()), timeout_s=120, lock_timeout_s=5)))
    settings = RecoverySettings.load(settings_file)
    tf = Terraform(root, data_dir=tmp_path / "tf-data", state_path=tmp_path / "fleet.tfstate",
                   cli_config_file=PATHS.terraform_cli_config)
    tf.init()
    tf.apply(json.loads(var_file.read_text()))
    return {"tmp": tmp_path, "settings": settings, "tf": tf, "var_file": var_file,
            "markers": markers, "standin": standin, "identity": identity,
            "runs": tmp_path / "runs", "settings_file": settings_file}


def creating(rec: Recorder) -> bool:
    """The replacement's create provisioner has started: the old instance's destroy is done
    and saved. (Its destroy-time provisioner sends a provision_start of its own, before
    the destroy is saved, so the first provision_start alone does not say so.)"""
    create_started = False
    for message, fields in rec.lines:
        if fields.get("event") == "apply_start" and "Creating..." in message:
            create_started = True
        elif create_started and fields.get("event") == "provision_start":
            return True
    return False


def ctx_for(node: str, rec: Recorder, data=None, job: str = "job-1") -> StepContext:
    return StepContext(job_id=job, node_id=node, generation=1, data=dict(data or {}),
                       progress=rec.progress, started_process=rec.started,
                       remember=rec.remember)


def ids(tf: Terraform) -> dict[str, str]:
    return dict(tf.output()["ids"])


def set_vars(world, **extra) -> None:
    data = {"nodes": NODES, "marker_dir": str(world["markers"]), **extra}
    world["var_file"].write_text(json.dumps(data))


def state_objects(tf: Terraform, node: str) -> list[dict]:
    return tf.state_resources(addr(node))


# -- Terraform: replace -----------------------------------------------------------------
def test_replace_changes_exactly_that_node_and_not_twice(world):
    tf, steps = world["tf"], RunnerSteps(world["settings"], runs_dir=world["runs"])
    before = ids(tf)
    rec = Recorder()
    out = steps.replace(ctx_for("standin-n2", rec))
    after = ids(tf)
    assert out == {"old_instance_id": before["standin-n2"],
                   "new_instance_id": after["standin-n2"]}
    assert after["standin-n2"] != before["standin-n2"]
    assert {k: v for k, v in after.items() if k != "standin-n2"} == {
        k: v for k, v in before.items() if k != "standin-n2"}
    assert (world["markers"] / "standin-n2").read_text().strip() == after["standin-n2"]
    assert len(state_objects(tf, "standin-n2")) == 1
    # streamed: Terraform's events and the old id before the apply, the process group
    assert any(f.get("old_instance_id") == before["standin-n2"] and "replacing" in m
               for m, f in rec.lines)
    assert any(f.get("event") == "apply_complete" for _, f in rec.lines)
    assert rec.groups and all(isinstance(g, int) and g > 0 for g in rec.groups)

    # called again with the old id in data (a controller killed after the apply): no apply
    again = Recorder()
    out2 = steps.replace(ctx_for("standin-n2", again, data=out))
    assert out2 == out
    assert ids(tf) == after
    assert again.groups == []  # no terraform apply was started
    assert any("already replaced" in m for m, _ in again.lines)


def test_a_terraform_failure_is_a_step_error_and_leaves_one_instance(world):
    tf, steps = world["tf"], RunnerSteps(world["settings"], runs_dir=world["runs"])
    before = ids(tf)
    set_vars(world, fail=["standin-n3"])
    first = Recorder()
    with pytest.raises(StepError) as err:
        steps.replace(ctx_for("standin-n3", first))
    message = str(err.value)
    assert "terraform apply failed" in message
    assert "stand-in node standin-n3 failed to boot" in message
    assert "\n" not in message
    assert len(state_objects(tf, "standin-n3")) == 1
    # the others are untouched
    assert ids(tf)["standin-n1"] == before["standin-n1"]
    # a retry once the cause is fixed completes (the tainted instance is not taken as done)
    set_vars(world)
    out = steps.replace(ctx_for("standin-n3", Recorder(), first.remembered))
    assert out["old_instance_id"] == before["standin-n3"]
    assert len(state_objects(tf, "standin-n3")) == 1
    assert not state_objects(tf, "standin-n3")[0].get("tainted")


def test_an_unknown_node_is_refused(world):
    steps = RunnerSteps(world["settings"], runs_dir=world["runs"])
    with pytest.raises(StepError, match="no instance at"):
        steps.replace(ctx_for("standin-n9", Recorder()))
    with pytest.raises(StepError, match="not a valid node name"):
        steps.replace(ctx_for('x"]; rm', Recorder()))




@pytest.mark.parametrize("where", ["remembered", "data lost"])
def test_a_replace_killed_mid_apply_resumes_to_one_instance(world, where):
    """Killed in the replacement's create provisioner, after the destroy was saved: the
    resumed attempt (this replica or another) knows the old id the step remembered in the
    job's data before it applied; without it (data lost) it sees no instance and creates
    it again, since the configuration declares it."""
    tf = world["tf"]
    before = ids(tf)
    set_vars(world, sleep={"standin-n2": "300"})
    first = RunnerSteps(world["settings"], runs_dir=world["runs"])
    rec = Recorder()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            first.replace(ctx_for("standin-n2", rec))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        # the replacement's create provisioner is sleeping: the old one is destroyed
        assert wait_until(lambda: creating(rec), timeout=60), rec.text()
        assert rec.groups
        pgid = rec.groups[-1]
        # what the engine does for a dead controller's step: kill the recorded group
        os.killpg(pgid, signal.SIGKILL)
        thread.join(timeout=60)
        assert not thread.is_alive()
        assert errors and isinstance(errors[0], StepError)
        assert wait_until(lambda: group_gone(pgid), timeout=10)
    finally:
        for g in rec.groups:
            if not group_gone(g):
                os.killpg(g, signal.SIGKILL)
    # a new controller (new RunnerSteps, data without the old id) resumes the step
    set_vars(world)
    resumed = Recorder()
    assert rec.remembered["old_instance_id"] == before["standin-n2"]
    data = rec.remembered if where == "remembered" else {}
    out = RunnerSteps(world["settings"], runs_dir=world["tmp"] / "other-runs").replace(
        ctx_for("standin-n2", resumed, data))
    assert out["old_instance_id"] == (before["standin-n2"] if where == "remembered" else None)
    after = ids(tf)
    assert after["standin-n2"] == out["new_instance_id"] != before["standin-n2"]
    assert len(state_objects(tf, "standin-n2")) == 1
    assert after["standin-n1"] == before["standin-n1"]
    assert after["standin-n3"] == before["standin-n3"]


def test_dry_run_prints_the_plan_and_changes_nothing(world):
    tf, steps = world["tf"], RunnerSteps(world["settings"], runs_dir=world["runs"])
    state = (world["tmp"] / "fleet.tfstate").read_bytes()
    before = ids(tf)
    dry = steps.dry_run("standin-n1")
    assert dry.node_id == "standin-n1"
    text = "\n".join(dry.terraform_plan)
    assert "Plan: 1 to add, 0 to change, 1 to destroy." in text
    assert f"planned: replace {addr('standin-n1')}" in text
    assert [Path(p.split(" ")[0]).name for p in dry.playbooks] == [
        "quarantine.yml", "forensics.yml", "harden.yml", "agent.yml"]
    assert (world["tmp"] / "fleet.tfstate").read_bytes() == state
    assert ids(tf) == before


# -- playbooks ---------------------------------------------------------------------------
def _runs_left(world) -> list[Path]:
    runs = world["runs"]
    return list(runs.iterdir()) if runs.exists() else []


def test_contain_streams_events_and_removes_its_run_dir(world):
    steps = RunnerSteps(world["settings"], runs_dir=world["runs"])
    rec = Recorder()
    out = steps.contain(ctx_for("standin-n1", rec))
    assert out == {"quarantine_mode": "soft"}
    assert (world["standin"] / "quarantined-standin-n1").read_text() == "soft\n"
    tasks = [(f["task"], f["status"]) for _, f in rec.lines if "task" in f]
    assert tasks == [("Check the mode", "ok"), ("Cut egress", "skipped"),
                     ("Record the quarantine", "changed")]
    assert rec.groups  # ansible-playbook's process group was reported
    assert _runs_left(world) == []


def test_a_failing_playbook_is_a_step_error_naming_host_and_task(world):
    steps = RunnerSteps(world["settings"], runs_dir=world["runs"])
    with pytest.raises(StepError) as err:
        steps.contain(ctx_for("standin-n2", Recorder()))
    message = str(err.value)
    assert "quarantine.yml" in message and "'Cut egress'" in message
    assert "standin-n2" in message and "failed on purpose" in message
    assert "\n" not in message
    assert _runs_left(world) == []


def test_collect_returns_the_encrypted_bundle(world):
    steps = RunnerSteps(world["settings"], runs_dir=world["runs"])
    rec = Recorder()
    out = steps.collect(ctx_for("standin-n1", rec, job="job-7"))
    bundle = Path(out["bundle_path"])
    assert bundle == world["tmp"] / "bundles" / "standin-n1-job-7.tar.age"
    sealed = bundle.read_bytes()
    assert out["bundle_bytes"] == len(sealed)
    import hashlib
    assert out["bundle_sha256"] == hashlib.sha256(sealed).hexdigest()
    plain = pyrage.decrypt(sealed, [world["identity"]])
    with tarfile.open(fileobj=io.BytesIO(plain)) as tar:
        assert tar.getnames() == ["ps.txt"]
    assert _runs_left(world) == []
    # a tampered bundle is refused against its manifest
    bundle.write_bytes(sealed + b"x")
    (world["tmp"] / "bundles" / "standin-n1-job-7.json").write_text(json.dumps({
        "node": "standin-n1", "incident": "job-8", "sha256": "0", "bytes": 1}))
    with pytest.raises(StepError, match="not for node standin-n1 and incident job-7"):
        steps._bundle(ctx_for("standin-n1", rec, job="job-7"),
                      world["tmp"] / "bundles" / "standin-n1-job-7.json", bundle)


def test_verify_converges_and_returns_the_golden_record(world):
    steps = RunnerSteps(world["settings"], runs_dir=world["runs"])
    rec = Recorder()
    out = steps.verify(ctx_for("standin-n1", rec))
    assert json.loads(out["golden"]) == {"profile": "standin", "files": {}}
    assert out["verified"] == "converge"
    assert ("Write the golden record", "changed") in [
        (f.get("task"), f.get("status")) for _, f in rec.lines]
    assert rec.groups
    assert '"profile"' not in rec.text()  # the record is returned, not streamed
    assert _runs_left(world) == []


def test_verify_on_a_baked_image_fails_on_drift(world, tmp_path):
    raw = yaml.safe_load(world["settings_file"].read_text())
    raw["baked"] = True
    world["settings_file"].write_text(yaml.safe_dump(raw))
    baked = RunnerSteps(RecoverySettings.load(world["settings_file"]), runs_dir=world["runs"])
    # the golden record is there already (baked): check mode changes nothing on n1
    RunnerSteps(world["settings"], runs_dir=world["runs"]).verify(
        ctx_for("standin-n1", Recorder()))
    out = baked.verify(ctx_for("standin-n1", Recorder()))
    assert out["verified"] == "check"
    with pytest.raises(StepError, match=r"drift on a baked image: .*Drift.* on standin-n2"):
        baked.verify(ctx_for("standin-n2", Recorder()))
    assert _runs_left(world) == []


def test_verify_gives_harden_yml_the_verify_vars_file(world, tmp_path):
    """A baked fleet's verify runs harden.yml in check mode with the bake's variables (else
    check mode reports the differences of other variables as drift)."""
    raw = yaml.safe_load(world["settings_file"].read_text())
    path = tmp_path / "harden-vars.yml"
    path.write_text(yaml.safe_dump({"standin_golden_content": '{"profile": "from-vars"}'}))
    raw["ansible"]["verify_vars_file"] = str(path)
    world["settings_file"].write_text(yaml.safe_dump(raw))
    steps = RunnerSteps(RecoverySettings.load(world["settings_file"]), runs_dir=world["runs"])
    out = steps.verify(ctx_for("standin-n1", Recorder()))
    assert json.loads(out["golden"]) == {"profile": "from-vars"}


def _token_command(world) -> list[str]:
    script = world["tmp"] / "issue-token"
    script.write_text(f"#!/bin/sh\necho \"{SECRET}-$1\"\n")
    script.chmod(0o700)
    return [str(script)]


def _files_holding(root: Path, needle: str) -> list[Path]:
    if not root.exists():
        return []
    return [p for p in root.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


def test_enroll_uses_the_token_command_and_no_log_hides_the_token(world):
    steps = RunnerSteps(world["settings"], runs_dir=world["runs"])
    rec = Recorder()
    out = steps.enroll(ctx_for("standin-n1", rec), _token_command(world))
    assert out == {"enrolled": True}
    # the token command got the node id appended, the play handed the token on
    assert (world["standin"] / "token-standin-n1").read_text() == f"{SECRET}-standin-n1\n"
    tasks = [(f["task"], f["status"]) for _, f in rec.lines if "task" in f]
    assert ("Take the one-time bootstrap token (in memory)", "ok") in tasks
    assert ("Show the token by mistake", "ok") in tasks
    assert SECRET not in rec.text()
    assert _files_holding(world["runs"], SECRET) == []
    assert _files_holding(world["tmp"] / "ansible-home", SECRET) == []
    assert _runs_left(world) == []


def test_a_failing_no_log_task_does_not_leak_into_the_error(world):
    raw = yaml.safe_load((world["tmp"] / "inventory.yml").read_text())
    raw["all"]["hosts"]["standin-n3"]["standin_refuse"] = True
    (world["tmp"] / "inventory.yml").write_text(yaml.safe_dump(raw))
    steps = RunnerSteps(world["settings"], runs_dir=world["runs"])
    rec = Recorder()
    with pytest.raises(StepError) as err:
        steps.enroll(ctx_for("standin-n3", rec), _token_command(world))
    assert "'Refuse the token'" in str(err.value) and "standin-n3" in str(err.value)
    assert SECRET not in str(err.value)
    assert SECRET not in rec.text()
    assert _files_holding(world["runs"], SECRET) == []
    assert _runs_left(world) == []


def test_a_cancelled_step_stops(world):
    from aegis_controller.recovery.steps import StepCancelled

    steps = RunnerSteps(world["settings"], runs_dir=world["runs"])
    ctx = ctx_for("standin-n1", Recorder())
    ctx.cancel.set()
    started = time.monotonic()
    with pytest.raises(StepCancelled):
        steps.contain(ctx)
    assert time.monotonic() - started < 60
    assert _runs_left(world) == []


def test_the_state_lock_is_respected_and_a_cancel_stops_terraform(world):
    """A replace while another apply holds the state lock fails after lock_timeout_s with
    Terraform's lock error; cancelling the running replace stops it (StepCancelled)."""
    from aegis_controller.recovery.steps import StepCancelled

    set_vars(world, sleep={"standin-n1": "300"})
    rec = Recorder()
    ctx = ctx_for("standin-n1", rec, job="job-a")
    errors: list[BaseException] = []

    def run() -> None:
        try:
            RunnerSteps(world["settings"], runs_dir=world["runs"]).replace(ctx)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        assert wait_until(lambda: any(f.get("event") == "provision_start"
                                      for _, f in rec.lines), timeout=60)
        started = time.monotonic()
        with pytest.raises(StepError, match="state lock"):
            RunnerSteps(world["settings"], runs_dir=world["runs"]).replace(
                ctx_for("standin-n3", Recorder(), job="job-b"))
        assert 4 < time.monotonic() - started < 60  # lock_timeout_s is 5
    finally:
        ctx.cancel.set()
        thread.join(timeout=90)
    assert not thread.is_alive()
    assert errors and isinstance(errors[0], StepCancelled)
    assert all(group_gone(g) for g in rec.groups)


def test_concurrent_replaces_of_one_controller_take_turns(world):
    """Two jobs at once (max_in_flight 2) on one controller: the second waits for the
    first's Terraform run instead of failing on the state lock (lock_timeout_s is 5, the
    first run takes 8 s)."""
    tf = world["tf"]
    before = ids(tf)
    set_vars(world, sleep={"standin-n1": "8"})
    steps = RunnerSteps(world["settings"], runs_dir=world["runs"])
    first, second = Recorder(), Recorder()
    results: dict[str, object] = {}

    def run(node: str, rec: Recorder, job: str) -> None:
        try:
            results[node] = steps.replace(ctx_for(node, rec, job=job))
        except BaseException as exc:
            results[node] = exc

    one = threading.Thread(target=run, args=("standin-n1", first, "job-1"), daemon=True)
    one.start()
    assert wait_until(lambda: any(f.get("event") == "provision_start"
                                  for _, f in first.lines), timeout=60)
    two = threading.Thread(target=run, args=("standin-n3", second, "job-2"), daemon=True)
    two.start()
    one.join(timeout=120)
    two.join(timeout=120)
    assert isinstance(results["standin-n1"], dict), results
    assert isinstance(results["standin-n3"], dict), results
    assert any("waiting for another replacement" in m for m, _ in second.lines)
    after = ids(tf)
    assert after["standin-n2"] == before["standin-n2"]
    assert after["standin-n1"] != before["standin-n1"]
    assert after["standin-n3"] != before["standin-n3"]
