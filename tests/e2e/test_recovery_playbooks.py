"""The recovery playbooks on a real node: one lab node with the agent installed by its role,
enrolled with a real controller on the fleet's bridge, segmentation on eth0.

- ``playbooks/quarantine.yml`` soft: a granted egress edge stops passing, SSH from the
  control node still works, and a second run changes nothing; hard: a workload unit is
  frozen while sshd and the agent keep running;
- ``playbooks/forensics.yml``: the bundle fetched to the control node decrypts with the
  test's own age identity to a tar with the expected members, the manifest's sha256 is the
  file's, nothing is left on the node and no tar plaintext was written there;
- both again inside the locally built execution environment (EE), through
  ansible-runner's container mode as AWX runs them, with the same checks;
- bad input (no target, no or a malformed incident-response key, Terraform inputs) fails
  on the control node before any node is touched, with the message saying what to do.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import socket
import subprocess
import tarfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pyrage
import pytest
import yaml

from aegis_controller.playbook import Ansible, PlayResult
from aegis_lab.ee import EEImage
from aegis_lab.fleet import LocalFleet
from aegis_lab.playbook import ansible_playbook, ansible_results
from aegis_lab.podman import podman
from aegis_lab.wheels import build_agent_wheels
from conftest import sub_prefix
from harness import PATHS, free_port, local_fleet, wait_until
from harness_controller import BIN, Server, controller_server
from harness_ee import ee_container, fleet_in_ee

pytestmark = pytest.mark.e2e

NODE = "node1"
AGENT = "/opt/aegis/agent/bin/aegis-agent"
WORK = "aegis-test-work.service"


def _exec(fleet: LocalFleet, *cmd: str) -> subprocess.CompletedProcess:
    return podman("exec", f"{fleet.prefix}-{NODE}", *cmd, check=False)


def _agent_status(fleet: LocalFleet) -> dict:
    out = _exec(fleet, AGENT, "status")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def lab() -> Iterator[tuple[LocalFleet, Server]]:
    """One node: golden record (harden, tag golden), agent role with segmentation on eth0."""
    build_agent_wheels(PATHS)
    prefix = sub_prefix()
    with local_fleet(prefix, 1, caps="agent") as fleet:
        gw = fleet.info()["gateway"]
        with controller_server(prefix, None, host=gw) as server:
            golden = ansible_playbook(fleet, PATHS.playbooks / "harden.yml", tags="golden")
            assert golden.ok, golden.tail(40)
            issued = server.ctl("token", "issue", NODE, "--no-wrap")
            assert issued.returncode == 0, issued.stderr
            play = [{"name": "Install the agent", "hosts": NODE, "gather_facts": False,
                     "roles": [{"role": "aegis.fleet.agent", "vars": {
                         "agent_controller_url": server.url,
                         "agent_controller_ca": (server.state / "ca" / "ca.pem").read_text(),
                         "agent_bootstrap_token": issued.stdout.strip(),
                         "agent_interval": 1, "agent_attest_interval": 3600,
                         "agent_segment_interface": "eth0",
                         "agent_edges": [f"{gw} -> any tcp/22"]}}]}]
            path = server.state / "agent.yml"
            path.write_text(yaml.safe_dump(play))
            agent = ansible_playbook(fleet, path)
            assert agent.ok, agent.tail(40)
            yield fleet, server


#: runs a recovery playbook by name with extra vars (on this host, or inside the EE)
Play = Callable[..., PlayResult]


def _play(fleet: LocalFleet, name: str, **extravars: object) -> PlayResult:
    return ansible_playbook(fleet, PATHS.playbooks / name, extravars=extravars, timeout=600)


def _result(run: PlayResult, task: str) -> dict:
    """The module result of ``task`` on the node."""
    for e in run.results:
        if e.host == NODE and e.task == task and e.status in ("ok", "changed", "failed"):
            return dict((e.raw.get("event_data") or {}).get("res") or {})
    raise AssertionError(f"no result for {task!r}: {run.tail(30)}")


QUARANTINE_TASK = "Quarantine through the agent, freeze the workloads in hard mode"


class Listener:
    """A TCP listener on the host (the fleet's gateway) counting the connections it gets."""

    def __init__(self, host: str) -> None:
        self.sock = socket.create_server((host, free_port()))
        self.port = self.sock.getsockname()[1]
        self.sock.settimeout(0.5)
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def _connect_from_node(fleet: LocalFleet, host: str, port: int) -> str:
    probe = ("import socket,sys\n"
             "try:\n"
             f"    socket.create_connection(('{host}', {port}), timeout=3).close(); print('open')\n"
             "except TimeoutError: print('timeout')\n"
             "except OSError as e: print(type(e).__name__)\n")
    return _exec(fleet, "python3", "-c", probe).stdout.strip()


@contextlib.contextmanager
def _granted_listener(fleet: LocalFleet) -> Iterator[Listener]:
    """A listener on the gateway the node may reach through a granted edge (checked)."""
    gw = fleet.info()["gateway"]
    address = fleet.info()["nodes"][NODE]["address"]
    listener = Listener(gw)
    try:
        granted = _exec(fleet, AGENT, "grant", f"{address} -> {gw} tcp/{listener.port}")
        assert granted.returncode == 0, granted.stderr
        assert _connect_from_node(fleet, gw, listener.port) == "open"
        yield listener
    finally:
        listener.close()


def _soft_quarantine_holds(fleet: LocalFleet, server: Server, listener: Listener,
                           play: Play) -> None:
    """quarantine.yml soft through ``play``: quarantined, egress to ``listener`` cut
    although granted, the management path kept (a second run over SSH changes nothing),
    the agent still heard by its controller."""
    gw = fleet.info()["gateway"]
    first = play("quarantine.yml", aegis_target=NODE)
    assert first.ok, first.tail(40)
    res = _result(first, QUARANTINE_TASK)
    assert res["changed"] and res["quarantined"] and res["frozen"] == [], res
    # the controller and the SSH source the agent role added stay reachable
    assert f"{gw} tcp/22" in res["management"], res["management"]
    assert f"{gw} tcp/{server.port}" in res["management"], res["management"]
    status = _agent_status(fleet)
    assert status["segment"]["quarantine"] is True
    # egress is cut although the edge is still granted
    assert _connect_from_node(fleet, gw, listener.port) == "timeout"
    # SSH from the control node still works: the second run goes over it, changes nothing
    second = play("quarantine.yml", aegis_target=NODE)
    assert second.ok, second.tail(40)
    assert second.changed == 0, second.tail(40)
    assert _result(second, QUARANTINE_TASK)["changed"] is False
    # the agent still reaches its controller (a heartbeat after the quarantine)
    assert wait_until(
        lambda: (_agent_status(fleet)["controller"] or {}).get("error") is None, 20)


def test_soft_quarantine_cuts_egress_keeps_ssh_and_is_idempotent(lab, tmp_path: Path) -> None:
    fleet, server = lab
    gw = fleet.info()["gateway"]
    with _granted_listener(fleet) as listener:
        # check mode (with a diff) says what would change and changes nothing
        dry = tmp_path / "dry.yml"
        dry.write_text(yaml.safe_dump([{
            "name": "Dry run", "hosts": NODE, "gather_facts": False,
            "tasks": [{"name": "Would quarantine", "check_mode": True, "diff": True,
                       "aegis.fleet.quarantine": {"mode": "soft"}}]}]))
        would = ansible_playbook(fleet, dry)
        assert would.ok, would.tail(30)
        res = _result(would, "Would quarantine")
        assert res["changed"] and res["quarantined"], res
        assert "quarantine: off" in res["diff"]["before"], res["diff"]
        assert "quarantine: on" in res["diff"]["after"], res["diff"]
        assert _agent_status(fleet)["segment"]["quarantine"] is False
        assert _connect_from_node(fleet, gw, listener.port) == "open"

        _soft_quarantine_holds(fleet, server, listener, functools.partial(_play, fleet))


def _freezer_state(fleet: LocalFleet, unit: str) -> str:
    return _exec(fleet, "systemctl", "show", "-p", "FreezerState", "--value", unit).stdout.strip()


def _stopped(fleet: LocalFleet, unit: str) -> bool:
    """Every process of the unit stopped (what SIGSTOP leaves on a cgroup v1 node)."""
    pids = _exec(fleet, "systemctl", "show", "-p", "MainPID", "--value", unit).stdout.split()
    states = [_exec(fleet, "sh", "-c", f"cut -d' ' -f3 /proc/{p}/stat").stdout.strip()
              for p in pids if p != "0"]
    return bool(states) and all(s in ("T", "t") for s in states)


def test_hard_quarantine_freezes_workloads_and_keeps_management(lab) -> None:
    fleet, _server = lab
    started = _exec(fleet, "systemd-run", f"--unit={WORK}", "sleep", "infinity")
    assert started.returncode == 0, started.stderr
    try:
        run = _play(fleet, "quarantine.yml", aegis_target=NODE, quarantine_mode="hard")
        assert run.ok, run.tail(40)
        res = _result(run, QUARANTINE_TASK)
        assert WORK in res["frozen"] and WORK in res["frozen_units"], (json.dumps(res), _exec(
            fleet, "systemctl", "show", "-p", "Id,Slice,SubState,ControlGroup", WORK).stdout)
        assert "aegis-agent.service" in res["kept"] and "ssh.service" in res["kept"], res
        assert not any(u in res["frozen_units"] for u in
                       ("aegis-agent.service", "ssh.service", "dbus.service",
                        "systemd-journald.service")), res
        if res["method"] == "cgroup":
            assert _freezer_state(fleet, WORK) == "frozen"
        else:  # a cgroup v1 node: systemd cannot freeze, the module stops the processes
            assert _stopped(fleet, WORK)
        for unit in ("ssh.service", "aegis-agent.service"):
            assert _exec(fleet, "systemctl", "is-active", unit).stdout.strip() == "active", unit
        assert _agent_status(fleet)["segment"]["quarantine"] is True
        assert set(res["frozen_units"]) == set(res["frozen"])  # nothing else was frozen
        again = _play(fleet, "quarantine.yml", aegis_target=NODE, quarantine_mode="hard")
        assert again.ok and again.changed == 0, again.tail(40)
        # a false alarm: state=absent thaws what is frozen and ends the agent's quarantine
        released = ansible_results(fleet, NODE, "aegis.fleet.quarantine", "state=absent")[NODE]
        assert released["changed"] and WORK in released["frozen"], released
        assert released["quarantined"] is False and released["frozen_units"] == [], released
        assert _agent_status(fleet)["segment"]["quarantine"] is False
        assert _freezer_state(fleet, WORK) == "running" and not _stopped(fleet, WORK)
    finally:
        _exec(fleet, "systemctl", "thaw", WORK)
        _exec(fleet, "systemctl", "kill", "-s", "CONT", WORK)
        _exec(fleet, "systemctl", "stop", WORK)


def _ustar_files(fleet: LocalFleet) -> list[str]:
    """Regular files under /run, /tmp and /var/tmp that are tar archives (magic at 257)."""
    scan = ("import os\n"
            "for top in ('/run', '/tmp', '/var/tmp'):\n"
            "    for d, _dirs, files in os.walk(top):\n"
            "        for f in files:\n"
            "            p = os.path.join(d, f)\n"
            "            try:\n"
            "                if not os.path.isfile(p) or os.path.islink(p): continue\n"
            "                with open(p, 'rb') as fh: head = fh.read(265)\n"
            "            except OSError: continue\n"
            "            if head[257:262] == b'ustar': print(p)\n")
    out = _exec(fleet, "python3", "-c", scan)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def _forensics_bundle_holds(fleet: LocalFleet, play: Play, dest: Path,
                            dest_arg: str | None = None) -> None:
    """forensics.yml through ``play``: the bundle lands in ``dest`` (given to the play as
    ``dest_arg``, the path where the play runs), encrypted to the test's own identity, with
    the expected members and a manifest naming its sha256; nothing is left on the node."""
    identity = pyrage.x25519.Identity.generate()
    # drift from the golden record, so the bundle has a file to name
    assert _exec(fleet, "sh", "-c", "echo '# drift' >> /etc/login.defs").returncode == 0
    run = play("forensics.yml", aegis_target=NODE,
               forensics_recipient=str(identity.to_public()),
               forensics_dest=dest_arg or str(dest), forensics_incident="inc-7")
    assert run.ok, run.tail(40)
    bundle = dest / f"{NODE}-inc-7.tar.age"
    manifest = json.loads((dest / f"{NODE}-inc-7.json").read_text())
    data = bundle.read_bytes()
    assert manifest["sha256"] == hashlib.sha256(data).hexdigest()
    assert int(manifest["bytes"]) == len(data)
    assert manifest["node"] == NODE and manifest["incident"] == "inc-7" and manifest["collected_at"]
    assert oct(bundle.stat().st_mode & 0o777) == "0o600"
    assert b"ustar" not in data[:1024]  # ciphertext, not a tar
    with tarfile.open(fileobj=io.BytesIO(pyrage.decrypt(data, [identity]))) as tar:
        names = tar.getnames()
        members = {n: tar.extractfile(n).read() for n in names}  # type: ignore[union-attr]
    assert names == manifest["contents"]
    assert {"collection.json", "processes.json", "sockets.txt", "agent-events.jsonl",
            "journal.txt", "golden-diff.json"} <= set(names)
    procs = json.loads(members["processes.json"])
    assert any("aegis-agent" in " ".join(p["cmdline"]) for p in procs), procs[:5]
    assert all({"pid", "ppid", "user", "exe", "cmdline"} <= set(p) for p in procs)
    assert b":22" in members["sockets.txt"]
    events = [json.loads(line) for line in members["agent-events.jsonl"].splitlines()]
    assert events and all("seq" in e for e in events)
    assert members["journal.txt"].strip()
    drift = json.loads(members["golden-diff.json"])
    assert {"path": "/etc/login.defs", "status": "changed"}.items() <= next(
        d for d in drift if d["path"] == "/etc/login.defs").items(), drift
    assert json.loads(members["errors.json"]) == {}
    # nothing left on the node, and no tar plaintext was ever written to its tmp dirs
    left = _exec(fleet, "sh", "-c", "ls -A /run/aegis-forensics 2>/dev/null")
    assert left.stdout.strip() == "", left.stdout
    assert _ustar_files(fleet) == []
    # a wrong identity cannot read it
    with pytest.raises(pyrage.DecryptError):
        pyrage.decrypt(data, [pyrage.x25519.Identity.generate()])


def test_forensics_bundle_is_encrypted_on_the_node_and_fetched(lab, tmp_path: Path) -> None:
    fleet, _server = lab
    _forensics_bundle_holds(fleet, functools.partial(_play, fleet), tmp_path / "ir")


def _failed_with(run: PlayResult, *needles: str) -> None:
    assert not run.ok, run.tail(30)
    text = " ".join(e.message for e in run.failures)
    for needle in needles:
        assert needle in text, text
    # failed on the control node, before the node was touched
    assert all(e.host == "localhost" for e in run.failures), [e.host for e in run.failures]
    assert not any(e.host == NODE for e in run.results if e.status), run.tail(30)


def test_bad_inputs_fail_early_with_what_to_do(lab, tmp_path: Path) -> None:
    fleet, _server = lab
    key = str(pyrage.x25519.Identity.generate().to_public())
    _failed_with(_play(fleet, "quarantine.yml"), "aegis_target is required")
    _failed_with(_play(fleet, "quarantine.yml", aegis_target="nosuchnode"),
                 "nosuchnode is not a node of the inventory")
    _failed_with(_play(fleet, "quarantine.yml", aegis_target=NODE, quarantine_mode="medium"),
                 "quarantine_mode must be soft or hard")
    _failed_with(_play(fleet, "forensics.yml", forensics_recipient=key),
                 "aegis_target is required")
    dest = tmp_path / "never"
    _failed_with(_play(fleet, "forensics.yml", aegis_target=NODE, forensics_dest=str(dest)),
                 "forensics_recipient: no recipient given", "age-keygen")
    bad = key[:-1] + ("q" if key[-1] != "q" else "p")
    _failed_with(_play(fleet, "forensics.yml", aegis_target=NODE, forensics_recipient=bad,
                       forensics_dest=str(dest)),
                 "bech32 checksum does not match", "age-keygen")
    _failed_with(_play(fleet, "forensics.yml", aegis_target=NODE, forensics_dest=str(dest),
                       forensics_recipient="AGE-SECRET-KEY-1" + "Q" * 58),
                 "an age identity (a private key), not a recipient")
    assert not dest.exists()  # nothing collected, nothing written
    _failed_with(_play(fleet, "rebuild.yml", aegis_target=NODE),
                 "terraform_root (the fleet's Terraform root module directory)")
    _failed_with(_play(fleet, "rebuild.yml", aegis_target=NODE,
                       terraform_root=str(tmp_path / "no-root"),
                       terraform_var_file=str(tmp_path / "none.tfvars")),
                 f"terraform apply -replace of {NODE} failed")


#: the incident-response directory as the EE sees it (mounted read-write)
IR_MOUNT = "/aegis-ir"


def test_recovery_playbooks_run_inside_the_ee(lab, execution_environment: EEImage,
                                              engine_env: None, tmp_path: Path) -> None:
    """forensics.yml and quarantine.yml (soft) the way AWX runs a job template: inside
    the locally built EE through ansible-runner's container mode, against the node over SSH
    with the fleet's key and pinned host keys, the inventory from the collection's own
    plugin; the same checks as the runs from this host. The node is released after."""
    fleet, server = lab
    ir = tmp_path / "ir"
    ir.mkdir()
    ir.chmod(0o770)  # written by the EE's user (uid 1000, group root)
    # podman's default network: the node sees the EE's connections masqueraded from the
    # fleet's gateway, the SSH source its segmentation (and a quarantine) allows
    with (fleet_in_ee(fleet, tmp_path) as seen,
          ee_container(execution_environment, sub_prefix(), *seen.options,
                       f"--volume={ir}:{IR_MOUNT}") as container):
        ansible = Ansible(tmp_path / "runs", env={}, suppress_env_files=True,
                          container=container)

        def play(name: str, **extravars: object) -> PlayResult:
            run = ansible.run(PATHS.playbooks / name, extravars=extravars,
                              inventory=seen.inventory, timeout=600, check=False)
            assert run.artifact_dir is not None
            command = json.loads((run.artifact_dir / "command").read_text())["command"]
            assert command[:2] == [container.executable, "run"], command  # in the EE
            assert execution_environment.ref in command, command
            return run

        _forensics_bundle_holds(fleet, play, ir / "out", f"{IR_MOUNT}/out")
        try:
            with _granted_listener(fleet) as listener:
                _soft_quarantine_holds(fleet, server, listener, play)
        finally:
            released = ansible_results(fleet, NODE, "aegis.fleet.quarantine", "state=absent")
        assert released[NODE]["quarantined"] is False, released
        assert _agent_status(fleet)["segment"]["quarantine"] is False


def test_a_node_whose_agent_was_stopped_is_contained_with_nftables(lab) -> None:
    """An attacker who stops the agent does not stop the containment: quarantine.yml finds
    no agent and cuts the node off with the project's own nftables table, the SSH path it
    runs over kept (a second run over it changes nothing); state=absent removes the table.
    Run last but the rebuild: the node is replaced after."""
    fleet, _server = lab
    gw = fleet.info()["gateway"]
    # whatever an earlier test left: not quarantined, nothing frozen
    ansible_results(fleet, NODE, "aegis.fleet.quarantine", "state=absent")
    try:
        with _granted_listener(fleet) as listener:
            stopped = _exec(fleet, "systemctl", "stop", "aegis-agent.service")
            assert stopped.returncode == 0, stopped.stderr
            first = _play(fleet, "quarantine.yml", aegis_target=NODE)
            assert first.ok, first.tail(40)
            res = _result(first, QUARANTINE_TASK)
            assert res["changed"] and res["quarantined"] and res["via"] == "nftables", res
            assert "the agent is not running" in res["agent_error"], res
            assert f"{gw} tcp/22" in res["management"], res["management"]
            table = _exec(fleet, "nft", "list", "table", "inet", "aegis_quarantine")
            assert table.returncode == 0 and "policy drop" in table.stdout, table
            assert _connect_from_node(fleet, gw, listener.port) == "timeout"
            second = _play(fleet, "quarantine.yml", aegis_target=NODE)
            assert second.ok, second.tail(40)
            assert second.changed == 0, second.tail(40)
    finally:
        released = ansible_results(fleet, NODE, "aegis.fleet.quarantine", "state=absent")
        _exec(fleet, "systemctl", "start", "aegis-agent.service")
    assert released[NODE]["changed"] and released[NODE]["via"] == "nftables", released
    assert _exec(fleet, "nft", "list", "table", "inet", "aegis_quarantine").returncode != 0
    assert wait_until(lambda: _exec(fleet, AGENT, "status").returncode == 0, 30)


def test_rebuild_replaces_exactly_that_node_and_enrolls_the_new_one(lab, tmp_path: Path) -> None:
    """rebuild.yml against the lab's own Terraform root: the node is a new one (new
    container, new machine-id), hardened and enrolled again by site.yml."""
    fleet, server = lab
    gw = fleet.info()["gateway"]
    before = _exec(fleet, "cat", "/etc/machine-id").stdout.strip()
    container = podman("inspect", "-f", "{{.Id}}", f"{fleet.prefix}-{NODE}").stdout.strip()
    var_file = tmp_path / "fleet.tfvars.json"  # Terraform reads JSON variables by this suffix
    # the old node falls silent during the replacement and turns suspect at the controller,
    # which then refuses its enrollment until an operator allows it (the engine does that
    # itself): the token command does both, as an operator's script would
    issue = tmp_path / "issue-token"
    ctl = f"{BIN / 'aegis-controller'} --state-dir {server.state}"
    issue.write_text("#!/bin/sh\n"
                     f'{ctl} node reenroll "$1" --reason "rebuilt by rebuild.yml" >&2 || true\n'
                     f'exec {ctl} token issue --no-wrap "$1"\n')
    issue.chmod(0o700)
    var_file.write_text(fleet.vars_file.read_text())
    run = _play(fleet, "rebuild.yml", aegis_target=NODE,
                terraform_root=str(PATHS.fleet_module), terraform_var_file=str(var_file),
                terraform_data_dir=str(fleet.dir / "terraform.d"),
                terraform_state=str(fleet.state_file),
                agent_controller_url=server.url,
                agent_controller_ca=(server.state / "ca" / "ca.pem").read_text(),
                agent_bootstrap_token_command=str(issue),
                agent_interval=1, agent_attest_interval=3600,
                agent_segment_interface="eth0", agent_edges=[f"{gw} -> any tcp/22"])
    assert run.ok, (run.tail(30), server.ctl("node", "show", NODE).stdout[-1500:])
    assert podman("inspect", "-f", "{{.Id}}", f"{fleet.prefix}-{NODE}").stdout.strip() != container
    assert _exec(fleet, "cat", "/etc/machine-id").stdout.strip() not in ("", before)
    assert _exec(fleet, "systemctl", "is-active", "aegis-agent").stdout.strip() == "active"
    status = _agent_status(fleet)
    assert status["segment"]["quarantine"] is False and status["segment"]["attached"]
    assert _exec(fleet, "test", "-s", "/var/lib/aegis/golden.json").returncode == 0
    assert list(fleet.info()["nodes"]) == [NODE]
    shown = json.loads(server.ctl("node", "show", NODE).stdout)
    assert shown["state"] == "enrolled", shown
