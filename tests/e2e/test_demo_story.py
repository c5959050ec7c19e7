"""The README's main command, end to end: ``aegis-lab demo`` (what ``./aegis demo`` runs)
tells the whole story on a 3-node fleet with a local OpenBao, and the test checks it
independently where it can.

Provision → harden → agent → enroll → attest → secrets leased → a simulated compromise on
node2 (an outbound connection no edge allows, an unknown binary run) → the exec killed,
node2 quarantined, its secrets revoked → forensics bundle → node2 replaced through
Terraform, verified, enrolled, trusted again → ledger verified; a timeline and a report.
The fleet is kept after the story (``--keep``) so the test can look at it, then removed.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from lane import Command, Job

from aegis_lab import controller as lab_controller
from aegis_lab.cleanup import down, sweep
from aegis_lab.demo import IMPLANT, VICTIM
from aegis_lab.fleet import LocalFleet
from aegis_lab.podman import podman
from conftest import LANE, sub_prefix
from harness import PATHS

pytestmark = pytest.mark.e2e

STATES = ("queued", "containing", "collecting", "replacing", "verifying", "enrolling",
          "trusted")


def _demo_job() -> Job:
    """``aegis-lab demo`` (as ./aegis demo runs it, in its own process) with ``--keep``,
    so the test can look at the fleet after the story. Past its timeout it gets SIGTERM,
    not SIGKILL: the demo unwinds and stops what it started (OpenBao runs in a session of
    its own, out of reach of anything sent to the demo's process group)."""
    prefix = sub_prefix()
    report = LANE.log_dir / f"demo-{prefix}.json"
    lab = str(Path(sys.executable).with_name("aegis-lab"))
    cmd = Command([lab, "--repo", str(PATHS.repo_root), "demo", "--prefix", prefix, "--keep",
                   "--report", str(report)], cwd=PATHS.repo_root, env=dict(os.environ),
                  timeout=2400, grace=300,
                  cleanup=[lab, "--repo", str(PATHS.repo_root), "cleanup", "--prefix", prefix])

    def run(say):
        report.parent.mkdir(parents=True, exist_ok=True)
        return (prefix, report, *cmd.run(say))
    # a run stopped before the story's tests took the demo's fleet removes it here
    return Job("demo", run, order=30, cancel=cmd.cancel, release=cmd.clean)


def lane_jobs(items: list[pytest.Item]) -> list[Job]:
    return [_demo_job()]


@pytest.fixture(scope="module")
def story(lane):
    """The demo runs in the background lane from the start of the run."""
    prefix, report, rc, out = lane("demo", _demo_job)
    fleet = LocalFleet(prefix, PATHS)
    try:
        proc = subprocess.CompletedProcess(["aegis-lab", "demo"], rc, out)
        print(out[-20000:])
        yield proc, json.loads(report.read_text()) if report.exists() else {}, fleet, report
    finally:
        try:
            lab_controller.down(fleet)
            down(fleet)
        finally:
            sweep(fleet)


def test_the_demo_tells_the_whole_story(story) -> None:
    proc, rep, _fleet, report = story
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert rep["ok"] is True
    names = [s["name"] for s in rep["steps"]]
    for part in ("provision", "harden", "OpenBao", "controller", "agent", "attest",
                 "secrets leased", "outbound connection", "unknown binary", "contained",
                 "recovery", "proof", "ledger verified"):
        assert any(part in n for n in names), (part, names)
    # the timeline was printed as the steps happened: each step's start line comes before
    # the next step's
    out = proc.stdout
    starts = [out.index(f"▶ {n}") for n in names]
    assert starts == sorted(starts)
    assert report.with_suffix(".txt").read_text().count(" ok ") >= len(names)

    # the compromise: the implant was killed by the agent, the node cut itself off in
    # milliseconds, and the controller raised the incidents
    marks = {m["name"]: m for m in rep["marks"]}
    contained = marks["exec → node cut off (detect → contained)"]
    assert contained["unit"] == "ms" and 0 <= contained["value"] < 60_000
    assert "killed" in str(rep["facts"]["deny_result"]), rep["facts"]["deny_result"]
    assert rep["facts"]["exec_event"]["data"]["filename"] == IMPLANT
    # the outbound connection got its answer before, none once the node was cut off, and
    # the connect monitor saw it
    assert rep["facts"]["connect_after_quarantine"] == "timeout", rep["facts"]
    assert rep["facts"]["connect_events"] >= 1
    rules = {i["rule"] for i in rep["facts"]["incidents"]}
    assert "agent-quarantined-node" in rules, rules

    # every state of the recovery job, in order
    job = rep["facts"]["recovery_job"]
    assert job["state"] == "trusted" and job["node_id"] == VICTIM
    seen = []
    for entry in job["history"]:
        if not seen or seen[-1] != entry["state"]:
            seen.append(entry["state"])
    assert [s for s in seen if s in STATES] == list(STATES), seen
    assert marks["contained → replacement trusted"]["value"] > 0

    # what the demo proved itself, each by a real request
    proof = rep["facts"]["proof"]
    assert proof == {k: True for k in proof} and len(proof) == 7, proof


def test_the_old_machine_is_gone_and_its_keys_are_refused(story) -> None:
    """Checked again here, independently of the demo's own checks: a new Terraform
    instance, the certificate the attacker could have taken refused, a new certificate
    and identity on the controller, the ledger intact."""
    _proc, rep, fleet, _report = story
    before = rep["facts"]["nodes"][VICTIM]
    now = fleet.info()["nodes"][VICTIM]
    assert now["id"] != before["id"] and now["address"] == before["address"]
    state = lab_controller.controller_dir(fleet)
    ctl = lab_controller.show(fleet)
    assert ctl and ctl["running"], ctl
    ctx = ssl.create_default_context(cafile=ctl["ca_file"])
    stolen = state / "stolen" / VICTIM
    ctx.load_cert_chain(stolen / "node.pem", stolen / "tls.key")
    with httpx.Client(base_url=ctl["url"], verify=ctx, timeout=30) as old:
        assert old.get("/v1/nodes/self").status_code in (401, 403)
    command = lab_controller.controller_command(fleet)
    shown = json.loads(subprocess.run([*command, "node", "show", VICTIM], check=True,
                                      capture_output=True, text=True).stdout)
    assert shown["state"] == "trusted"
    stolen_pem = (stolen / "node.pem").read_text()
    on_node = podman("exec", f"{fleet.prefix}-{VICTIM}", "cat",
                     "/var/lib/aegis/agent/node.pem").stdout
    assert on_node and on_node != stolen_pem
    # the implant is not on the new machine
    assert podman("exec", f"{fleet.prefix}-{VICTIM}", "test", "-e", IMPLANT,
                  check=False).returncode == 1
    verify = subprocess.run([*command, "ledger", "verify"], capture_output=True, text=True,
                            check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_a_dry_run_prints_the_plan_and_changes_nothing(story) -> None:
    """``recovery start --dry-run`` with the demo's recovery settings: real Terraform plans
    the replacement of exactly that node and lists the playbooks; nothing changes."""
    _proc, _rep, fleet, _report = story
    before = fleet.info()["nodes"]["node1"]["id"]
    settings = lab_controller.controller_dir(fleet) / "recovery.yml"
    dry = subprocess.run([*lab_controller.controller_command(fleet), "recovery", "start",
                          "node1", "--dry-run", "--config", str(settings)],
                         capture_output=True, text=True, timeout=600, check=False)
    assert dry.returncode == 0, dry.stderr
    assert "module.node[\"node1\"]" in dry.stdout, dry.stdout
    assert "must be replaced" in dry.stdout or "to destroy" in dry.stdout, dry.stdout
    for playbook in ("quarantine.yml", "forensics.yml", "harden.yml", "agent.yml"):
        assert playbook in dry.stdout, dry.stdout
    assert fleet.info()["nodes"]["node1"]["id"] == before
    jobs = subprocess.run([*lab_controller.controller_command(fleet), "recovery", "list",
                           "--node", "node1"], capture_output=True, text=True, check=True)
    assert jobs.stdout.strip() == ""
