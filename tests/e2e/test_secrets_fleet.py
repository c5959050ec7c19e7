"""Leased secrets on a real node: the node's service logs in to PostgreSQL with a
credential the agent rendered on tmpfs, only while the node is trusted.

One node of a local fleet (podman + systemd over SSH) with the ``aegis.fleet.agent`` role;
on the host, on the fleet's bridge: a real controller with its secrets gate, a real
OpenBao wired by the ``aegis.fleet.vault`` role (the node's AppRole bound to the node's
address; TTLs of seconds), and a real PostgreSQL whose logins Vault's database engine
makes per lease. The node's service is ``tests/secret_consumer.py`` in its own venv,
running as its own user, reloaded with SIGHUP by the agent after a rotation.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import harness_vault as hv
import hvac
import pytest
import yaml
from harness_vault import pg_role_exists

from aegis_lab.fleet import LocalFleet
from aegis_lab.playbook import ansible_playbook
from aegis_lab.podman import podman
from aegis_lab.wheels import build_agent_wheels
from conftest import sub_prefix
from harness import PATHS, REPO, OpenBao, local_fleet, openbao_dev, wait_until
from harness_controller import Server, controller_server, operator_client
from harness_pg import PgServer, postgres_server

pytestmark = pytest.mark.e2e

NODE = "node1"
APP = "/opt/app"
CRED = "/run/aegis/secrets/db.env"
STATUS = "/run/app/status.json"  # RuntimeDirectory of the unit
PSYCOPG = next(line.split(";")[0].strip() for line in
               (REPO / "requirements.txt").read_text().splitlines()
               if line.startswith("psycopg"))


def _wait(pred, timeout: float = 90) -> bool:
    return wait_until(pred, timeout, 0.5)


def _consumer_wheels() -> Path:
    """Wheels of psycopg for the node's service (the node cannot reach PyPI), cached."""
    out = PATHS.state_root / "wheels-consumer"
    if not any(out.glob("psycopg_binary-*.whl")):
        subprocess.run([sys.executable, "-m", "pip", "download", "--only-binary=:all:",
                        "--dest", str(out), PSYCOPG], check=True, capture_output=True,
                       timeout=600)
    return out


@dataclass
class Lab:
    fleet: LocalFleet
    server: Server
    bao: OpenBao
    pg: PgServer
    wiring: hv.Wiring
    gateway: str
    address: str
    serve_args: tuple[str, ...] = ()

    def exec(self, *cmd: str) -> subprocess.CompletedProcess:
        return podman("exec", f"{self.fleet.prefix}-{NODE}", *cmd, check=False)

    def journal(self, unit: str) -> str:
        return self.exec("journalctl", "-u", unit, "--no-pager", "-n", "40").stdout

    def status(self) -> dict:
        out = self.exec("cat", STATUS)
        return json.loads(out.stdout) if out.returncode == 0 and out.stdout else {}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    build_agent_wheels(PATHS)
    prefix = sub_prefix()
    with local_fleet(prefix, 1, caps="agent") as fleet:
        info = fleet.info()
        gateway, address = info["gateway"], info["nodes"][NODE]["address"]
        with openbao_dev(prefix, host=gateway) as bao, \
                postgres_server(prefix, hosts=(gateway,)) as pg:
            admin = hv.make_pg_admin(pg)
            wiring = hv.wire(bao, admin, tmp_path_factory.mktemp("wiring"),
                             token_ttl="6s", token_max_ttl="120s",  # noqa: S106 - durations
                             db_ttl="6s", db_max_ttl="120s", node_cidrs=[f"{address}/32"])
            with controller_server(prefix, None, host=gateway) as server:
                server.kill()  # again, with its secrets gate on
                args = ("--secrets-token-file", str(wiring.controller_token_file),
                        "--vault-addr", bao.addr, "--vault-ca", str(bao.ca_file),
                        "--secrets-approle-mount", wiring.approle_mount,
                        "--secrets-prefix", wiring.prefix, "--secrets-verify-dsn",
                        f"host=127.0.0.1 port={pg.port} user=aegis dbname=postgres")
                server.start(*args)
                yield Lab(fleet, server, bao, pg, wiring, gateway, address, args)


def _install_app(lab: Lab) -> None:
    """The node's service: its own user and venv, a unit whose reload is SIGHUP."""
    wheels = _consumer_wheels()
    book = [{"name": "The app", "hosts": NODE, "gather_facts": False, "tasks": [
        {"name": "App user", "ansible.builtin.user": {"name": "app", "system": True,
                                                       "create_home": False}},
        {"name": "App dir", "ansible.builtin.file": {"path": f"{APP}/wheels",
                                                     "state": "directory", "mode": "0755"}},
        {"name": "Wheels", "ansible.builtin.copy": {"src": f"{wheels}/", "dest": f"{APP}/wheels/",
                                                   "mode": "0644"}},
        {"name": "Service code", "ansible.builtin.copy": {
            "src": str(REPO / "tests" / "secret_consumer.py"),
            "dest": f"{APP}/secret_consumer.py", "mode": "0644"}},
        {"name": "Venv", "ansible.builtin.command": {
            "argv": ["python3", "-m", "venv", f"{APP}/venv"], "creates": f"{APP}/venv"}},
        {"name": "psycopg in the venv, from the wheels", "ansible.builtin.command": {
            "argv": [f"{APP}/venv/bin/pip", "install", "--no-index", "--find-links",
                     f"{APP}/wheels", PSYCOPG],
            "creates": f"{APP}/venv/lib/python3.11/site-packages/psycopg"}},
        {"name": "Unit", "ansible.builtin.copy": {"dest": "/etc/systemd/system/app.service",
                                                  "mode": "0644", "content": (
            "[Unit]\nDescription=App that reads its database login from tmpfs\n"
            "[Service]\nUser=app\nRuntimeDirectory=app\nRuntimeDirectoryPreserve=yes\n"
            f"ExecStart={APP}/venv/bin/python {APP}/secret_consumer.py {CRED} {STATUS}\n"
            "ExecReload=/bin/kill -HUP $MAINPID\n")}},
    ]}]
    path = lab.wiring.controller_token_file.parent / "app.yml"
    path.write_text(yaml.safe_dump(book))
    run = ansible_playbook(lab.fleet, path)
    assert run.ok, run.stdout[-4000:]


def _node(server: Server) -> dict:
    return json.loads(server.ctl("node", "show", NODE).stdout or "{}")


def _agent_vars(lab: Lab, server: Server, owner: str = "app",
                reload: list[str] | None = None, wrapped: bool = True) -> dict:
    """The agent role's variables (no token): the node's secret sink renders the app's
    database login and API key, owned by ``owner``, and runs ``reload`` after a change;
    ``wrapped``: the bootstrap token is response-wrapped by OpenBao."""
    w, gw = lab.wiring, lab.gateway
    bao_port = lab.bao.addr.rsplit(":", 1)[1]
    again = {"reload": reload} if reload else {}
    return {
        "agent_controller_url": server.url,
        "agent_controller_ca": (server.state / "ca" / "ca.pem").read_text(),
        **({"agent_vault_url": lab.bao.addr,
            "agent_vault_ca": Path(lab.bao.ca_file or "").read_text()} if wrapped else {}),
        "agent_interval": 1,
        "agent_attest_interval": 3600,
        "agent_segment_interface": "eth0",
        "agent_edges": [f"{gw} -> any tcp/22"],
        "agent_management_peers": [f"{gw} tcp/{bao_port}", f"{gw} tcp/{lab.pg.port}"],
        "agent_secrets_ca": Path(lab.bao.ca_file or "").read_text(),
        "agent_secrets": {
            "url": lab.bao.addr, "approle_mount": w.approle_mount,
            "role": w.approle("web"), "role_id": w.role_ids["web"],
            "files": [
                {"name": "db.env", "owner": owner, "group": owner, "mode": "0400",
                 "database": {"mount": w.names["vault_database_mount"], "role": "web"},
                 "template": f"host={gw}\nport={lab.pg.port}\ndbname=postgres\n"
                             "username={username}\npassword={password}\n", **again},
                {"name": "api_key", "owner": owner, "group": owner, "mode": "0400",
                 "kv": {"mount": w.names["vault_kv_mount"], "path": "web/app",
                        "field": "api_key"}, **again},
            ]},
    }


def _agent_playbook(lab: Lab, server: Server, token: str) -> Path:
    play = [{
        "name": "Install the agent with a secret sink", "hosts": NODE, "gather_facts": False,
        "roles": [{"role": "aegis.fleet.agent", "vars": {
            **_agent_vars(lab, server, reload=["systemctl", "reload", "app.service"]),
            "agent_bootstrap_token": token}}],
    }]
    path = server.state / "agent.yml"
    path.write_text(yaml.safe_dump(play))
    return path


def _cat(lab: Lab, path: str) -> str | None:
    out = lab.exec("cat", path)
    return out.stdout if out.returncode == 0 else None


def test_a_trusted_node_s_service_uses_leased_secrets_until_quarantine(lab: Lab) -> None:
    server, w = lab.server, lab.wiring
    harden = ansible_playbook(lab.fleet, PATHS.playbooks / "harden.yml", tags="golden")
    assert harden.ok, harden.stdout[-3000:]
    _install_app(lab)
    assert lab.exec("systemctl", "start", "app.service").returncode == 0

    # 1. the agent with its sink; enrolled, not yet trusted: no token, no file
    issued = server.ctl("token", "issue", NODE, env=lab.bao.env)
    assert issued.returncode == 0, issued.stderr
    token = issued.stdout.strip()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ANSIBLE_VERBOSITY", "3")  # -vvv
        first = ansible_playbook(lab.fleet, _agent_playbook(lab, server, token))
    assert first.ok, first.stdout[-4000:]
    assert "<node1> SSH: EXEC" in first.stdout or "ESTABLISH" in first.stdout  # really -vvv
    # no_log: neither the role_id nor the bootstrap token in the output or the artifacts
    assert first.artifact_dir is not None
    kept = [f.read_bytes() for f in first.artifact_dir.parent.rglob("*") if f.is_file()]
    for value in (w.role_ids["web"], token):
        assert value not in first.stdout and not any(value.encode() in k for k in kept)
    assert _wait(lambda: _node(server).get("state") == "enrolled"), _node(server)
    mount = lab.exec("findmnt", "-n", "-o", "FSTYPE,OPTIONS", "/run/aegis/secrets").stdout
    assert mount.startswith("tmpfs"), mount
    assert all(o in mount for o in ("noexec", "nosuid", "nodev")), mount
    role = server.ctl("node", "secrets-role", NODE, "web")
    assert role.returncode == 0, role.stderr
    assert _cat(lab, CRED) is None
    assert lab.status().get("user") is None

    # 2. trusted (the operator's expected profile from the golden record) -> the service
    # logs in with a login Vault made for this lease, read from tmpfs
    golden = server.state / "golden.json"
    golden.write_text(_cat(lab, "/var/lib/aegis/golden.json") or "")
    assert _wait(lambda: _node(server).get("measurement") is not None)
    pinned = server.ctl("profile", "set", NODE, str(golden), "--pin-bpf")
    assert pinned.returncode == 0, pinned.stderr
    assert _wait(lambda: _node(server).get("state") == "trusted"), _node(server)
    assert _wait(lambda: _cat(lab, CRED) is not None, 60), lab.journal("aegis-agent")
    cred = dict(line.split("=", 1) for line in (_cat(lab, CRED) or "").splitlines())
    assert _wait(lambda: lab.status().get("user") == cred["username"], 30), \
        (lab.status(), lab.journal("app.service"))
    stat = lab.exec("stat", "-c", "%a %U", CRED).stdout.split()
    assert stat == ["400", "app"], stat
    assert (_cat(lab, "/run/aegis/secrets/api_key") or "").strip() == w.kv_values["web"]
    assert pg_role_exists(lab.pg.port, cred["username"])
    shown = json.loads(server.ctl("node", "secrets", NODE).stdout)
    accessor = shown["grants"][-1]["accessor"]
    assert cred["username"] in shown["grants"][-1]["logins"]

    # 3. renewal keeps it connected across more than three token and lease TTLs (6 s)
    ok = lab.status()["ok"]
    time.sleep(25)
    now = lab.status()
    assert now["error"] is None and now["ok"] > ok + 30, now
    # 4. a rotation of the KV secret reaches the service (reload), agent not restarted
    pid = lab.exec("systemctl", "show", "-p", "MainPID", "--value", "aegis-agent").stdout
    reloads = now["reloads"]
    w.set_kv("web", f"web-{secrets.token_hex(8)}")
    assert _wait(lambda: (_cat(lab, "/run/aegis/secrets/api_key") or "").strip()
                 == w.kv_values["web"], 60)
    assert _wait(lambda: lab.status()["reloads"] > reloads, 30), lab.status()
    assert lab.exec("systemctl", "show", "-p", "MainPID", "--value", "aegis-agent").stdout == pid
    cred = dict(line.split("=", 1) for line in (_cat(lab, CRED) or "").splitlines())
    values = [cred["password"], w.kv_values["web"], w.controller_token, token]

    # nothing secret on the node's disk (outside tmpfs), in its journal or the ledger
    found = lab.exec("grep", "-rlsF", "--exclude-dir=proc", "--exclude-dir=sys",
                     "--exclude-dir=run", "--exclude-dir=dev", "-e", cred["password"],
                     "-e", w.kv_values["web"], "/")
    assert found.stdout == "", found.stdout
    journal = lab.exec("journalctl", "--no-pager", "-o", "cat").stdout
    ledger = server.ctl("ledger", "show").stdout
    for value in values:
        assert value not in journal and value not in ledger
        assert value not in (server.state / "serve.log").read_text()

    # 5. quarantine: the node wipes its files; the controller revokes on its own
    with operator_client(server) as op:
        r = op.post("/v1/orders", json={"node_id": NODE, "kind": "quarantine",
                                        "args": {"level": "soft", "reason": "e2e"}})
    assert r.status_code == 201, r.text
    done = server.ctl("node", "secrets", NODE, "--wait-revoked", "60")
    assert done.returncode == 0, done.stdout + done.stderr
    assert _wait(lambda: _cat(lab, CRED) is None and
                 _cat(lab, "/run/aegis/secrets/api_key") is None, 30)
    with pytest.raises(hvac.exceptions.VaultError):
        w.root.write_data("auth/token/lookup-accessor", data={"accessor": accessor})
    assert _wait(lambda: not pg_role_exists(lab.pg.port, cred["username"]), 30)
    assert _wait(lambda: lab.status().get("error") is not None, 30), lab.status()
    ledger = server.ctl("ledger", "show").stdout
    for value in values:
        assert value not in ledger
