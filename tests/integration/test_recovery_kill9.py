"""Kill -9 the controller while a recovery job is ``replacing`` or ``verifying``; the job
completes after a restart (SQLite) or on a second replica (PostgreSQL, same database, a
short lease), with exactly one instance of the node in the Terraform state and nothing left
of the killed step's processes.

Everything is real but the machines: real ``aegis-controller serve --recovery-config``
processes, real Terraform on the STAND-IN root module (tests/fixtures/tf_standin_fleet:
terraform_data "nodes" whose create provisioner sleeps as long as the var file says) and
the STAND-IN playbooks (tests/fixtures/standin_playbooks, on localhost; harden.yml sleeps
while the slow-verify file exists). The fleet enrolls through the API with real keys and
fresh one-time tokens; the "new machine" of the replacement enrolls with the token the
enroll play got from the controller's own ``token issue`` and fresh keys, and is attested
trusted the way the engine tests do (the recorded state move an attestation makes)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness_recovery import FIXTURES, standin_settings
from pyrage import x25519

from aegis_controller.domain import Controller, open_controller
from aegis_controller.nodes import NodeState
from aegis_controller.processes import group_members, kill_group, process_start
from aegis_controller.settings import Settings
from aegis_controller.terraform import Terraform
from aegis_controller.trust import transition
from conftest import sub_prefix
from harness import PATHS, wait_until
from harness_controller import Server, enroll, new_node

pytestmark = pytest.mark.integration

NODES = ["standin-n1", "standin-n2", "standin-n3"]
VICTIM = "standin-n2"
#: How long the killed attempt's Terraform provisioner / verify task would sleep (the
#: resumed attempt does not sleep: the var file and the slow-verify file are reset).
SLOW_S = 120
LEASE_S = 3
GOLDEN = json.dumps({"image_id": "standin-golden"})


def address(node: str) -> str:
    return f'module.node["{node}"].terraform_data.node'


@dataclass
class Rig:
    root: Path
    db: str | None
    servers: list[Server] = field(default_factory=list)
    tf: Terraform | None = None
    ctl: Controller | None = None

    @property
    def var_file(self) -> Path:
        return self.root / "fleet.tfvars.json"

    @property
    def slow_verify(self) -> Path:
        return self.root / "slow-verify"

    @property
    def standin(self) -> Path:
        return self.root / "standin"

    def set_vars(self, **extra: Any) -> None:
        self.var_file.write_text(json.dumps({"nodes": NODES,
                                             "marker_dir": str(self.root / "markers"),
                                             **extra}))

    def alive(self) -> Server:
        return next(s for s in self.servers if s.proc is not None)

    def cli(self, *args: str) -> Any:
        out = self.alive().ctl(*args)
        assert out.returncode == 0, out.stderr
        return out.stdout

    def job(self, job_id: str) -> dict:
        return json.loads(self.cli("recovery", "show", job_id))

    def ids(self) -> dict[str, str]:
        assert self.tf is not None
        return dict(self.tf.output()["ids"])


def _serve_args(rig: Rig) -> tuple[str, ...]:
    return ("--recovery-config", str(rig.root / "recovery.yml"))


def _write_world(rig: Rig) -> None:
    root = rig.root
    shutil.copytree(FIXTURES / "tf_standin_fleet", root / "module")
    for d in ("markers", "standin"):
        (root / d).mkdir()
    rig.set_vars()
    hostvars = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
                "standin_root": str(rig.standin),
                "standin_golden": str(rig.standin / "golden.json"),
                "standin_golden_content": GOLDEN}
    (root / "inventory.yml").write_text(yaml.safe_dump({"all": {"hosts": {
        n: {**hostvars, **({"standin_slow_verify": str(rig.slow_verify)}
                           if n == VICTIM else {})} for n in NODES}}}))
    (root / "agent-vars.yml").write_text("agent_controller_url: https://127.0.0.1:1\n")
    (root / "recovery.yml").write_text(yaml.safe_dump(standin_settings(
        root, rig.standin, str(x25519.Identity.generate().to_public()), timeout_s=300,
        lock_timeout_s=30, enroll_timeout_s=120, lease_s=LEASE_S, poll_s=0.5)))
    rig.tf = Terraform(root / "module", data_dir=root / "tf-data",
                       state_path=root / "fleet.tfstate",
                       cli_config_file=PATHS.terraform_cli_config)
    rig.tf.init()
    rig.tf.apply(json.loads(rig.var_file.read_text()))


def processes_in(root: Path, but: frozenset[int] = frozenset()) -> list[str]:
    """Live processes whose command line or working directory points into ``root``, but
    those in ``but``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in {os.getpid(), *but}:
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            cwd = os.readlink(entry / "cwd")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state in ("Z", "X"):
            continue
        if str(root) in cmdline or cwd.startswith(str(root)):
            found.append(f"{entry.name} {cmdline.strip()[:200]} (cwd {cwd})")
    return found


def _kill_everything_in(root: Path) -> None:
    for line in processes_in(root):
        with contextlib.suppress(OSError):
            os.kill(int(line.split()[0]), signal.SIGKILL)


@pytest.fixture
def rig(request: pytest.FixtureRequest) -> Iterator[Rig]:
    db = str(request.getfixturevalue("pg_url")) if request.param == "postgresql" else None
    root = Path(tempfile.mkdtemp(prefix=f"{sub_prefix()}-kill9-"))
    it = Rig(root, db)
    try:
        _write_world(it)
        state = root / "ctl"
        state.mkdir()
        first = Server(state, db)
        it.servers.append(first)
        assert first.ctl("keys", "init").returncode == 0
        first.start(*_serve_args(it))
        if db is not None:  # the second replica: same database, another port
            second = Server(state, db)
            it.servers.append(second)
            second.start(*_serve_args(it))
        it.ctl = open_controller(Settings.resolve(state, db, state / "ledger.anchor.json"))
        yield it
    finally:
        for server in it.servers:
            if server.proc is not None:
                server.kill()
        if it.ctl is not None:
            it.ctl.engine.dispose()
        _kill_everything_in(root)
        shutil.rmtree(root, ignore_errors=True)


def enroll_fresh(rig: Rig, node: str, token: str) -> dict:
    """``node`` enrolls through the API with fresh keys and ``token``, and is attested
    trusted (the recorded move an attestation makes); returns its row."""
    assert rig.ctl is not None
    fresh = new_node(rig.alive(), node)
    r = enroll(rig.alive(), fresh, token)
    assert r.status_code == 200, r.text
    rig.ctl.nodes.move(node, transition(NodeState.ENROLLED, NodeState.TRUSTED,
                                        "attestation matches the expected profile"), "test")
    return rig.ctl.nodes.get(node)


def _pid_of(owner: str | None) -> int | None:
    return int(owner.split(":")[1]) if owner else None


# Two of the four combinations (the suite's time budget): each step is killed once, each
# database once; the steps' own resume logic is covered per step in test_recovery_steps.
@pytest.mark.parametrize(("rig", "kill_during"), [("sqlite", "replacing"),
                                                  ("postgresql", "verifying")],
                         indirect=["rig"])
def test_a_controller_killed_mid_step_is_resumed_to_one_trusted_replacement(
        rig: Rig, kill_during: str) -> None:
    assert rig.ctl is not None
    for node in NODES:
        enroll_fresh(rig, node, rig.alive().token(node))
    before_ids = rig.ids()
    old = rig.ctl.nodes.get(VICTIM)
    # the killed attempt is slow where it is killed; the resumed one is not
    if kill_during == "replacing":
        rig.set_vars(sleep={VICTIM: str(SLOW_S)})
    else:
        rig.slow_verify.write_text(str(SLOW_S))
    rig.ctl.nodes.move(VICTIM, transition(NodeState.TRUSTED, NodeState.QUARANTINED,
                                          "incident: unknown binary executed"), "test")

    def job_in(state: str) -> dict | None:
        jobs = rig.ctl.recovery.list(node_id=VICTIM)
        return jobs[0] if jobs and jobs[0]["state"] == state else None

    def slow_step_running() -> dict | None:
        job = job_in(kill_during)
        if job is None or not job["step_pgids"] or job["lease_owner"] is None:
            return None
        history = rig.ctl.recovery.history(job["job_id"])
        running = processes_in(rig.root)
        if kill_during == "replacing":  # the old instance is destroyed, the new one boots
            started = any(h["fields"].get("event") == "provision_start"
                          for h in history) and any(f"sleep {SLOW_S}" in p for p in running)
        else:
            started = any(str(rig.slow_verify) in p for p in running)
        return job if started else None

    assert wait_until(lambda: slow_step_running() is not None, timeout=120), (
        rig.ctl.recovery.list(node_id=VICTIM))
    job = slow_step_running()
    assert job is not None
    job_id, generation = job["job_id"], job["generation"]
    pgids = [int(r["pgid"]) for r in job["step_pgids"]]
    # the step's latest group (Terraform's apply, ansible-playbook) runs; earlier ones
    # (terraform init, state show) are done
    assert group_members(pgids[-1]), job["step_pgids"]
    victim_server = next(s for s in rig.servers
                         if s.proc is not None and s.proc.pid == _pid_of(job["lease_owner"]))
    victim_server.kill(signal.SIGKILL)
    killed_at = time.monotonic()
    if kill_during == "replacing":  # killed in the worst window: the old one is destroyed
        assert not (rig.root / "markers" / VICTIM).exists()
    rig.set_vars()
    rig.slow_verify.unlink(missing_ok=True)
    if rig.db is None:  # one replica: restart it (a new owner: it waits for the lease)
        victim_server.start(*_serve_args(rig))

    # the resumed attempt goes on to enrolling; the new machine enrolls with the token the
    # enroll play got from this controller's `token issue`, and fresh keys
    token_file = rig.standin / f"token-{VICTIM}"
    assert wait_until(lambda: token_file.exists() and token_file.read_text().strip(),
                      timeout=180), (rig.job(job_id), rig.alive().state / "serve.log")
    token = token_file.read_text().strip()
    token_file.unlink()
    new = enroll_fresh(rig, VICTIM, token)
    assert wait_until(lambda: rig.ctl.recovery.get(job_id)["state"] in ("trusted", "failed"),
                      timeout=60)
    shown = rig.job(job_id)
    assert shown["state"] == "trusted", shown
    assert time.monotonic() - killed_at < 150

    # a new certificate and identity key, not the old machine's
    node = rig.ctl.nodes.get(VICTIM)
    assert node["state"] == NodeState.TRUSTED
    assert node["cert_serial"] == new["cert_serial"] != old["cert_serial"]
    assert node["identity_key"] not in (None, old["identity_key"])
    assert shown["data"]["new_cert_serial"] == node["cert_serial"]

    # exactly one instance of that node; the others untouched
    assert rig.tf is not None
    objects = rig.tf.state_resources(address(VICTIM))
    assert len(objects) == 1 and not objects[0].get("tainted"), objects
    after_ids = rig.ids()
    assert after_ids[VICTIM] != before_ids[VICTIM]
    assert after_ids[VICTIM] == shown["data"]["new_instance_id"]
    assert shown["data"]["old_instance_id"] == before_ids[VICTIM]
    assert {n: after_ids[n] for n in NODES if n != VICTIM} == {
        n: before_ids[n] for n in NODES if n != VICTIM}
    assert (rig.root / "markers" / VICTIM).read_text().strip() == after_ids[VICTIM]

    # nothing of the killed step remains
    for pgid in pgids:
        assert group_members(pgid) == [], pgid
    serving = frozenset(s.proc.pid for s in rig.servers if s.proc is not None)
    assert processes_in(rig.root, serving) == [], processes_in(rig.root, serving)

    # the resumed attempt: a later generation, and it cleared the dead attempt's groups
    assert shown["generation"] > generation
    messages = [h["message"] for h in shown["history"]]
    step = "replace" if kill_during == "replacing" else "verify"
    for pgid in pgids:
        assert any(m.startswith(f"process group {pgid} of the previous attempt "
                                f"(generation {generation}, step {step}):")
                   for m in messages), messages
    assert [h["state"] for h in shown["history"]].count(kill_during) >= 2
    moves = [m.split(":")[0] for m in messages if " -> " in m]
    assert moves[-3:] == ["replacing -> verifying", "verifying -> enrolling",
                          "enrolling -> trusted"]
    verified = json.loads(rig.cli("ledger", "verify", "--json"))
    assert verified["ok"] is True and verified["count"] > 0, verified
    if rig.db is not None:  # the second replica finished it; the killed one stayed dead
        assert victim_server.proc is None and rig.alive() is not victim_server


#: A step's leader (ansible-playbook) that is slow to stop on SIGTERM and has a worker in
#: a session of its own (as Ansible's task workers are) running the task's command.
_STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", sys.argv[1]],
                 start_new_session=True)
print("ready", flush=True)
time.sleep(300)
"""


def test_a_leftover_group_is_killed_with_the_sessions_its_processes_started(
        tmp_path: Path) -> None:
    """What the engine kills for a dead attempt is the recorded group and every process
    its members started, whatever session they moved to: the worker of a leader that does
    not stop within the grace would otherwise outlive the step."""
    marker = tmp_path / f"{sub_prefix()}-worker"
    leader = subprocess.Popen([sys.executable, "-c", _STUBBORN, str(marker)],
                              start_new_session=True, stdout=subprocess.PIPE, text=True)
    try:
        assert leader.stdout is not None and leader.stdout.readline().strip() == "ready"
        assert wait_until(lambda: len(processes_in(tmp_path)) == 2, timeout=10)
        [worker] = [int(p.split()[0]) for p in processes_in(tmp_path)
                    if int(p.split()[0]) != leader.pid]
        assert os.getsid(worker) == worker != leader.pid  # outside the recorded group
        outcome = kill_group(leader.pid, process_start(leader.pid), grace=0.5)
        assert outcome == "killed (SIGKILL)"
        assert leader.wait(timeout=10) == -signal.SIGKILL
        assert wait_until(lambda: not processes_in(tmp_path), timeout=10), \
            processes_in(tmp_path)
    finally:
        _kill_everything_in(tmp_path)
        if leader.poll() is None:
            leader.kill()
            leader.wait()
