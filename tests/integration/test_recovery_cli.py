"""``aegis-controller recovery``: the real command on a real state directory (SQLite); the
fleet is enrolled and quarantined through the controller's stores, ``--dry-run`` gets the
stand-in steps (tests/recovery_standin.py: no machine is touched)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from harness_domain import enroll_trusted as enroll
from harness_domain import quarantine

from aegis_controller.domain import Controller, open_controller
from aegis_controller.ledger import Kind, init_keys
from aegis_controller.recovery.states import JobState
from aegis_controller.settings import Settings

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent / "aegis-controller"
TESTS = Path(__file__).resolve().parents[1]


@pytest.fixture
def state(tmp_path: Path) -> Path:
    init_keys(tmp_path / "keys")
    return tmp_path


def _ctl(state: Path) -> Controller:
    return open_controller(Settings.resolve(state, None, state / "ledger.anchor.json"))


def run(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.pop("AEGIS_CONTROLLER_DB", None)
    return subprocess.run([str(BIN), "--state-dir", str(state), *args], capture_output=True,
                          text=True, timeout=120, check=False, env=env)


def test_start_show_list_approve_reject_and_their_errors(state: Path) -> None:
    ctl = _ctl(state)
    for node in ("n1", "n2", "n3"):
        enroll(ctl, node)
    quarantine(ctl, "n1")

    out = run(state, "recovery", "start", "ghost")
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip() == "aegis-controller: error: no node 'ghost'"
    out = run(state, "recovery", "start", "n2")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "aegis-controller: error: node 'n2' is trusted, not quarantined: a recovery job "
        "replaces a quarantined node only (quarantine it first)"]
    out = run(state, "recovery", "show", "nope")
    assert out.returncode == 2
    assert out.stderr.strip() == ("aegis-controller: error: no recovery job 'nope' (list them "
                                  "with `aegis-controller recovery list`)")
    assert run(state, "recovery", "list").stdout == ""

    out = run(state, "recovery", "start", "n1", "--reason", "denied exec on n1")
    assert out.returncode == 0, out.stderr
    job = json.loads(out.stdout)
    assert (job["node_id"], job["state"], job["reason"]) == ("n1", "queued", "denied exec on n1")
    assert "recovery show " + job["job_id"] in out.stderr
    out = run(state, "recovery", "start", "n1")
    assert out.returncode == 2 and f"already has recovery job {job['job_id']}" in out.stderr

    out = run(state, "recovery", "approve", job["job_id"])
    assert out.returncode == 2
    assert "only a job awaiting approval can be approved" in out.stderr
    # the guard rails hold it (as the engine would): then an operator approves or rejects
    ctl.recovery.move(job["job_id"], JobState.AWAITING_APPROVAL, "approval mode", actor="test")
    out = run(state, "recovery", "approve", job["job_id"])
    assert out.returncode == 0, out.stderr
    approved = json.loads(out.stdout)
    assert approved["state"] == "queued" and approved["approved_by"].startswith("operator:")

    shown = json.loads(run(state, "recovery", "show", job["job_id"]).stdout)
    assert [h["state"] for h in shown["history"]] == ["queued", "awaiting-approval", "queued"]
    listed = [json.loads(line) for line in run(state, "recovery", "list", "--active")
              .stdout.splitlines()]
    assert [j["job_id"] for j in listed] == [job["job_id"]]

    ctl.recovery.move(job["job_id"], JobState.AWAITING_APPROVAL, "held again", actor="test")
    assert run(state, "recovery", "reject", job["job_id"]).returncode == 2  # --reason needed
    out = run(state, "recovery", "reject", job["job_id"], "--reason", "rebuild by hand")
    assert out.returncode == 0, out.stderr
    rejected = json.loads(out.stdout)
    assert rejected["state"] == "failed" and "rebuild by hand" in rejected["error"]
    assert ctl.nodes.get("n1")["state"] == "quarantined"
    actors = [r.actor for r in ctl.ledger.records()
              if r.kind == Kind.REBUILD and r.body.get("to") in ("queued", "failed")]
    assert actors and all(a.startswith("operator:") for a in actors)
    assert ctl.ledger.verify().ok


def test_dry_run_prints_the_plan_and_playbooks_and_changes_nothing(state: Path) -> None:
    ctl = _ctl(state)
    enroll(ctl, "n1")
    quarantine(ctl, "n1")
    before = ctl.ledger.head()
    out = run(state, "recovery", "start", "n1", "--dry-run")
    assert out.returncode == 2
    assert "recovery.yml" in out.stderr  # the settings file the real steps need is missing
    # the settings file's backend chooses the steps: here steps of our own (the stand-in)
    config = state / "standin-recovery.yml"
    config.write_text("backend: python\npython: {factory: recovery_standin:standin_factory}\n")
    out = run(state, "recovery", "start", "n1", "--dry-run", "--steps", "x:y")
    assert out.returncode == 2 and "unrecognized arguments: --steps" in out.stderr
    out = run(state, "recovery", "start", "n1", "--dry-run", "--config", str(config))
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "dry run: recovery of n1 (now quarantined); nothing was changed",
        "terraform plan:",
        "  # stand-in plan: aegis_node.n1 must be replaced",
        "  Plan: 1 to add, 0 to change, 1 to destroy.",
        "playbooks, in order:",
        "  playbooks/quarantine.yml", "  playbooks/forensics.yml", "  playbooks/rebuild.yml"]
    out = run(state, "recovery", "start", "n1", "--dry-run", "--json", "--config",
              str(config))
    assert json.loads(out.stdout)["playbooks"][0] == "playbooks/quarantine.yml"
    out = run(state, "recovery", "start", "ghost", "--dry-run", "--config", str(config))
    assert out.returncode == 2 and "no node 'ghost'" in out.stderr
    for text, problem in (
            ("backend: python\npython: {factory: recovery_standin:nothing}\n",
             "python.factory 'recovery_standin:nothing': recovery_standin has no nothing"),
            ("backend: python\npython: {factory: no_such_module:f}\n",
             "cannot import no_such_module"),
            ("backend: python\npython: {factory: json:dumps}\n",
             "failed: TypeError: Object of type RecoverySettings is not JSON serializable"),
            ("backend: python\npython: {factory: builtins:repr}\n",
             "made a str without contain, collect, verify, enroll, dry_run"),
            ("backend: python\n", "python is missing: add the section"),
            ("backend: plugin\n", "backend must be one of runner, awx, python")):
        config.write_text(text)
        out = run(state, "recovery", "start", "n1", "--dry-run", "--config", str(config))
        assert out.returncode == 2 and problem in out.stderr, out.stderr
    assert ctl.recovery.list() == []
    assert ctl.ledger.head() == before
    assert ctl.nodes.get("n1")["state"] == "quarantined"


def test_profile_set_reads_its_file_with_the_parser_the_engine_uses(state: Path) -> None:
    """``profile set`` and the engine's verify step share one parser of profile documents:
    the same clear errors for a missing, unparsable or wrong file."""
    ctl = _ctl(state)
    enroll(ctl, "n1")
    good = state / "golden.json"
    good.write_text(json.dumps({"golden": {"/etc/passwd": "1" * 64}}))
    out = run(state, "profile", "set", "n1", str(good))
    assert out.returncode == 0, out.stderr
    assert json.loads(ctl.nodes.get("n1")["profile"])["golden"] == {"/etc/passwd": "1" * 64}
    bad = state / "bad.json"
    for text, problem in (("{not json", "Expecting property name"),
                          ('{"golden": 5}', "golden")):
        bad.write_text(text)
        out = run(state, "profile", "set", "n1", str(bad))
        assert out.returncode == 2
        assert out.stderr.startswith(f"aegis-controller: error: {bad}: neither an expected "
                                     "profile nor a golden record (")
        assert problem in out.stderr
    out = run(state, "profile", "set", "n1", str(state / "missing.json"))
    assert out.returncode == 2 and "missing.json: cannot read it" in out.stderr
