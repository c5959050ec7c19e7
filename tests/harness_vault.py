"""The fleet's Vault wiring for the tests: the role aegis.fleet.vault run for real with
``ansible-playbook`` against the session's OpenBao dev server and PostgreSQL.

:func:`play` runs the role with given variables (the operator token and the database
password reach it only through the environment); :func:`wire` converges it once with a
fresh name prefix and mount paths and gives what the controller and an agent need: the
AppRole mount and names, each node role's role_id, the controller's narrow token, and a
KV secret per node role."""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import hvac
import psycopg

from aegis_lab.playbook import ansible_env
from harness import PATHS, OpenBao
from harness_pg import PgServer

RECAP = re.compile(r"^localhost\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+"
                   r"failed=(\d+)", re.M)


@dataclass(frozen=True)
class PgAdmin:
    """The login the database engine acts as (CREATEROLE, may end other logins' sessions)."""

    server: PgServer
    user: str
    password: str = field(repr=False)


def make_pg_admin(pg_server: PgServer) -> PgAdmin:
    user, password = f"vaultadm_{secrets.token_hex(3)}", secrets.token_urlsafe(18)
    with psycopg.connect(f"host=127.0.0.1 port={pg_server.port} user=aegis dbname=postgres",
                         autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {user} LOGIN CREATEROLE PASSWORD '{password}'")  # type: ignore[arg-type]
        conn.execute(f"GRANT pg_signal_backend TO {user}")  # type: ignore[arg-type]
    return PgAdmin(pg_server, user, password)


def pg_role_exists(port: int, user: str) -> bool:
    with psycopg.connect(f"host=127.0.0.1 port={port} user=aegis dbname=postgres") as conn:
        return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (user,)).fetchone() \
            is not None


def pg_connect(port: int, user: str, password: str) -> psycopg.Connection:
    return psycopg.connect(host="127.0.0.1", port=port, user=user, password=password,
                           dbname="postgres", autocommit=True, connect_timeout=5)


@dataclass
class Run:
    rc: int
    output: str

    @property
    def changed(self) -> int:
        m = RECAP.search(self.output)
        assert m, self.output[-3000:]
        return int(m.group(2))


def names() -> dict[str, str]:
    p = f"t{secrets.token_hex(3)}"
    return {"vault_name_prefix": p, "vault_approle_mount": f"{p}-approle",
            "vault_kv_mount": f"{p}-kv", "vault_database_mount": f"{p}-db",
            "vault_ssh_mount": f"{p}-ssh", "vault_pki_mount": f"{p}-pki"}


def role_vars(names: dict, pg: PgAdmin | None, token_file: Path | None, **over) -> dict:
    role = dict(names)
    role["vault_node_roles"] = [
        {"name": "web", "kv_paths": ["web/*"], "database_roles": ["web"],
         "cidrs": ["127.0.0.1/32"], "token_ttl": "5m", "token_max_ttl": "15m"},
        # an address the tests never log in from: its secret_ids must not work here
        {"name": "db", "kv_paths": ["db/*"], "cidrs": ["192.0.2.10"]},
    ]
    if pg is not None:
        role["vault_database"] = {
            "name": "app", "host": "127.0.0.1", "port": pg.server.port, "dbname": "postgres",
            "sslmode": "disable", "username": pg.user,
            # the secret comes from the environment, never a file
            "password": "{{ lookup('ansible.builtin.env', 'AEGIS_TEST_DB_PASSWORD') }}"}
        role["vault_database_roles"] = [{"name": "web", "default_ttl": "10m", "max_ttl": "1h"}]
    if token_file is not None:
        role["vault_controller_token_file"] = str(token_file)
    role.update(over)
    return role


def play(bao: OpenBao, path: Path, role_vars: dict, *flags: str,
         pg: PgAdmin | None = None, url: str | None = None, hosts: str = "localhost",
         token: str | None = None) -> Run:
    """ansible-playbook with the role (on localhost, or on ``hosts`` of an inventory given
    in ``flags``, delegated to localhost); the operator token reaches it only through the
    environment (BAO_TOKEN), the database password likewise."""
    book: list[dict] = [{"name": "Vault wiring", "hosts": hosts, "gather_facts": False,
                         "roles": [{"role": "aegis.fleet.vault", "vars": role_vars}]}]
    if hosts == "localhost":
        book[0]["connection"] = "local"
    path.write_text(json.dumps(book))
    env = ansible_env(PATHS)
    env.pop("ANSIBLE_INVENTORY", None)
    env.update(bao.env, ANSIBLE_LOCALHOST_WARNING="0", ANSIBLE_INVENTORY_UNPARSED_WARNING="0",
               ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    if url:
        env["BAO_ADDR"] = url
    if token:
        env["BAO_TOKEN"] = token
    if pg is not None:
        env["AEGIS_TEST_DB_PASSWORD"] = pg.password
    proc = subprocess.run([str(Path(sys.executable).with_name("ansible-playbook")), str(path),
                           *flags], env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    return Run(proc.returncode, proc.stdout + proc.stderr)


@dataclass
class Wiring:
    """What :func:`wire` made on the server."""

    bao: OpenBao
    pg: PgAdmin
    names: dict[str, str]
    role_ids: dict[str, str]  # node role -> its AppRole's role_id
    controller_token_file: Path
    kv_values: dict[str, str] = field(repr=False)  # node role -> value of <role>/app api_key

    @property
    def prefix(self) -> str:
        return self.names["vault_name_prefix"]

    @property
    def approle_mount(self) -> str:
        return self.names["vault_approle_mount"]

    def approle(self, role: str) -> str:
        """The AppRole name of node role ``role`` (what an agent's config names)."""
        return f"{self.prefix}-{role}"

    @property
    def root(self) -> hvac.Client:
        return hvac.Client(url=self.bao.addr, token=self.bao.token,
                           verify=self.bao.ca_file or True)

    @property
    def controller_token(self) -> str:
        return self.controller_token_file.read_text().strip()

    def set_kv(self, role: str, value: str) -> None:
        """Write (a new version of) node role ``role``'s secret ``<role>/app`` field api_key."""
        self.root.secrets.kv.v2.create_or_update_secret(
            f"{role}/app", {"api_key": value}, mount_point=self.names["vault_kv_mount"])
        self.kv_values[role] = value


def wire(bao: OpenBao, pg: PgAdmin, workdir: Path, *,
         token_ttl: str = "5m", token_max_ttl: str = "15m",  # noqa: S107 - durations
         db_ttl: str = "10m", db_max_ttl: str = "1h",
         node_cidrs: list[str] | None = None) -> Wiring:
    """The role converged with a fresh prefix: node role ``web`` (KV ``web/*``, database
    role ``web``, bound to 127.0.0.1 or ``node_cidrs``) and ``db`` (bound to 192.0.2.10),
    the TTLs given,
    the controller's token in ``workdir/controller-token``, a KV secret per node role."""
    workdir.mkdir(parents=True, exist_ok=True)
    n, token_file = names(), workdir / "controller-token"
    rv = role_vars(n, pg, token_file)
    rv["vault_node_roles"][0].update(token_ttl=token_ttl, token_max_ttl=token_max_ttl)
    if node_cidrs:
        rv["vault_node_roles"][0]["cidrs"] = node_cidrs
    rv["vault_database_roles"] = [{"name": "web", "default_ttl": db_ttl, "max_ttl": db_max_ttl}]
    run = play(bao, workdir / "vault-play.json", rv, pg=pg)
    assert run.rc == 0, run.output[-4000:]
    root = hvac.Client(url=bao.addr, token=bao.token, verify=bao.ca_file or True)
    role_ids = {r: root.read(f"auth/{n['vault_approle_mount']}/role/"
                             f"{n['vault_name_prefix']}-{r}/role-id")["data"]["role_id"]
                for r in ("web", "db")}
    w = Wiring(bao, pg, n, role_ids, token_file, {})
    for r in ("web", "db"):
        w.set_kv(r, f"{r}-{secrets.token_hex(8)}")
    return w
