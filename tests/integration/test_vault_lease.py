"""The aegis.fleet.vault_lease lookup and the aegis.fleet.vault_lease_revoke callback with
real ansible-playbook runs against the run's real OpenBao and PostgreSQL.

The setup is made here with hvac (not the aegis.fleet.vault role): a database secrets
engine whose role creates PostgreSQL logins, a KV v2 secret, and a token whose policy can
read those and revoke their leases, nothing else. The server's pg_hba gets one line first
so that the leased logins (members of this module's group role) must give their password
(scram-sha-256): everything else stays on the fixture's trust, and connecting with the
leased credential proves the password is the right one.

What the playbooks' consumer receives (the leased username and password) comes back to
the test over a unix socket, in memory, so the test can search every output for it."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import ansible_runner
import hvac
import psycopg
import pytest

from aegis_lab.playbook import ansible_env
from harness import PATHS, OpenBao, free_port
from harness_pg import PgServer

pytestmark = pytest.mark.integration
PLAYBOOK_BIN = Path(sys.executable).with_name("ansible-playbook")
CANARY = "not-a-secret-" + secrets.token_hex(4)  # proves the -vvv output shows environment:
LEASED = re.compile(r"aegis\.fleet\.vault_lease: leased (\S+) for (\d+) s")

CONSUMER = """
import json, os, socket, sys
import psycopg
cred = json.loads(sys.stdin.read())
with psycopg.connect(host="127.0.0.1", port=int(os.environ["PGPORT"]),
                     dbname=os.environ["PGDATABASE"], user=cred["username"],
                     password=cred["password"]) as conn:
    me = conn.execute("select current_user").fetchone()[0]
with socket.socket(socket.AF_UNIX) as s:
    s.connect(sys.argv[1])
    s.sendall(json.dumps({"host": sys.argv[2], "user": me,
                          "password": cred["password"]}).encode())
"""


@dataclass
class Setup:
    bao: OpenBao
    pg: PgServer
    database: str
    group: str
    db_path: str
    kv_path: str
    token: str
    read_only_token: str  # may read the credential but not revoke its lease
    api_key: str
    template: str
    root: hvac.Client = field(repr=False)

    def lease_alive(self, lease_id: str) -> bool:
        try:
            self.root.sys.read_lease(lease_id)
            return True
        except hvac.exceptions.InvalidRequest:  # "invalid lease"
            return False

    def login_exists(self, user: str) -> bool:
        with self.admin() as conn:
            return conn.execute("select 1 from pg_roles where rolname = %s",
                                (user,)).fetchone() is not None

    def can_login(self, user: str, password: str) -> bool:
        try:
            with psycopg.connect(host="127.0.0.1", port=self.pg.port, dbname=self.database,
                                 user=user, password=password, connect_timeout=5):
                return True
        except psycopg.OperationalError:
            return False

    def admin(self, dbname: str | None = None) -> psycopg.Connection:
        return psycopg.connect(host="127.0.0.1", port=self.pg.port, user="aegis",
                               dbname=dbname or self.database, autocommit=True)


@contextlib.contextmanager
def _password_logins_for(pg: PgServer, group: str) -> Iterator[None]:
    """Members of ``group`` must log in with their password (first pg_hba line)."""
    with psycopg.connect(host="127.0.0.1", port=pg.port, user="aegis", dbname="postgres",
                         autocommit=True) as conn:
        hba = Path(conn.execute("show hba_file").fetchone()[0])
        original = hba.read_text()
        hba.write_text(f"host all +{group} 127.0.0.1/32 scram-sha-256\n{original}")
        conn.execute("select pg_reload_conf()")
    try:
        yield
    finally:
        hba.write_text(original)
        with psycopg.connect(host="127.0.0.1", port=pg.port, user="aegis", dbname="postgres",
                             autocommit=True) as conn:
            conn.execute("select pg_reload_conf()")


@pytest.fixture(scope="module")
def setup(openbao: OpenBao, pg_server: PgServer) -> Iterator[Setup]:
    tag = secrets.token_hex(3)
    group, db_mount, kv_mount = f"aegis_lease_{tag}", f"lease-db-{tag}", f"lease-kv-{tag}"
    root = hvac.Client(url=openbao.addr, token=openbao.token)
    with pg_server.database() as url:
        database = url.rsplit("/", 1)[1]
        with psycopg.connect(host="127.0.0.1", port=pg_server.port, user="aegis",
                             dbname="postgres", autocommit=True) as conn:
            conn.execute(f"create role {group} nologin")
        try:
            with _password_logins_for(pg_server, group):
                root.sys.enable_secrets_engine("database", path=db_mount)
                root.secrets.database.configure(
                    name="pg", plugin_name="postgresql-database-plugin", mount_point=db_mount,
                    connection_url=f"postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:"
                                   f"{pg_server.port}/{database}?sslmode=disable",
                    username="aegis", password="trust-auth-ignores-it",  # noqa: S106
                    allowed_roles=["app"])
                root.secrets.database.create_role(
                    name="app", db_name="pg", mount_point=db_mount,
                    creation_statements=[
                        "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' "
                        f"VALID UNTIL '{{{{expiration}}}}' IN ROLE {group};"],
                    default_ttl=300, max_ttl=600)
                root.sys.enable_secrets_engine("kv", path=kv_mount, options={"version": "2"})
                api_key, template = f"ak-{secrets.token_hex(12)}", "{{ 6 * 7 }}"
                for _ in range(100):  # the new mount upgrades to v2 for a moment first
                    try:
                        root.secrets.kv.v2.create_or_update_secret(
                            path="app", mount_point=kv_mount,
                            secret={"api_key": api_key, "template": template})
                        break
                    except hvac.exceptions.InvalidRequest:
                        time.sleep(0.1)
                policy = f"lease-app-{tag}"
                root.sys.create_or_update_policy(policy, f"""
path "{db_mount}/creds/app" {{ capabilities = ["read"] }}
path "sys/leases/revoke/{db_mount}/creds/app/*" {{ capabilities = ["update"] }}
path "{kv_mount}/data/*" {{ capabilities = ["read"] }}
""")
                root.sys.create_or_update_policy(f"{policy}-ro", f"""
path "{db_mount}/creds/app" {{ capabilities = ["read"] }}
path "{kv_mount}/data/*" {{ capabilities = ["read"] }}
""")
                token, read_only = (root.auth.token.create(policies=[name], ttl="15m")
                                    ["auth"]["client_token"] for name in (policy, f"{policy}-ro"))
                yield Setup(openbao, pg_server, database, group, f"{db_mount}/creds/app",
                            f"{kv_mount}/data/app", token, read_only, api_key, template, root)
                root.sys.revoke_prefix(f"{db_mount}/")
                root.sys.disable_secrets_engine(db_mount)
                root.sys.disable_secrets_engine(kv_mount)
        finally:
            with psycopg.connect(host="127.0.0.1", port=pg_server.port, user="aegis",
                                 dbname="postgres", autocommit=True) as conn:
                members = conn.execute(
                    "select r.rolname from pg_roles r join pg_auth_members m on m.member = r.oid"
                    " join pg_roles g on g.oid = m.roleid where g.rolname = %s", (group,))
                for (name,) in members.fetchall():
                    conn.execute(f'drop role if exists "{name}"')
                conn.execute(f"drop role if exists {group}")


class Receiver:
    """A unix socket the consumer reports what it connected with to (in memory)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.got: list[dict] = []
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(str(path))
        self.sock.listen()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                self.got.append(json.loads(conn.makefile("rb").read()))

    def wait(self, count: int, timeout: float = 60) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(self.got) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return list(self.got)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    r = Receiver(tmp_path / "consumer.sock")
    try:
        yield r
    finally:
        r.close()


def _play(tmp_path: Path, s: Setup, extra_tasks: list[dict] | None = None,
          hosts: int = 2) -> tuple[Path, Path]:
    consumer = tmp_path / "consumer.py"
    consumer.write_text(CONSUMER)
    tasks = [
        {"name": "Lease a database login and read a KV secret",
         "ansible.builtin.set_fact": {
             "db": "{{ lookup('aegis.fleet.vault_lease', db_path, ttl=lease_ttl | int) }}",
             "api_key": "{{ lookup('aegis.fleet.vault_lease', kv_path, field='api_key') }}",
             "tmpl": "{{ lookup('aegis.fleet.vault_lease', kv_path, field='template') }}"},
         "no_log": True},
        {"name": "Connect to PostgreSQL with it (a later task: another worker process)",
         "ansible.builtin.command": {"argv": [sys.executable, str(consumer),
                                              str(tmp_path / "consumer.sock"),
                                              "{{ inventory_hostname }}"]},
         # on stdin (a module argument, hidden by no_log); never in `environment:`, which
         # Ansible prints at -vvv even with no_log (see CANARY)
         "args": {"stdin": "{{ db | to_json }}"},
         "environment": {"PGPORT": str(s.pg.port), "PGDATABASE": s.database,
                         "AEGIS_CANARY": CANARY},
         "changed_when": False, "no_log": True},
        {"name": "The KV values arrive, untemplated",
         "ansible.builtin.assert": {"that": [
             "api_key | hash('sha256') == api_key_sha",
             "tmpl | hash('sha256') == template_sha"]}},
        {"name": "A diff of a file rendered with the secret (check mode)",
         "ansible.builtin.copy": {"content": "password={{ db.password }}\n",
                                  "dest": str(tmp_path / "{{ inventory_hostname }}.conf"),
                                  "mode": "0600"},
         "check_mode": True, "diff": True, "no_log": True},
        *(extra_tasks or []),
    ]
    book = tmp_path / "lease.yml"
    book.write_text(json.dumps([{"name": "Lease", "hosts": "all", "connection": "local",
                                 "gather_facts": False, "tasks": tasks}]))
    inventory = tmp_path / "hosts.ini"
    inventory.write_text("".join(f"h{i} ansible_python_interpreter={sys.executable}\n"
                                 for i in range(hosts)))
    return book, inventory


def _extravars(s: Setup, ttl: int = 120) -> dict:
    return {"db_path": s.db_path, "kv_path": s.kv_path, "lease_ttl": ttl,
            "api_key_sha": hashlib.sha256(s.api_key.encode()).hexdigest(),
            "template_sha": hashlib.sha256(s.template.encode()).hexdigest()}


def _env(s: Setup, callback: bool = True) -> dict[str, str]:
    env = ansible_env(PATHS)
    env.pop("ANSIBLE_INVENTORY", None)
    env.update({"VAULT_ADDR": s.bao.addr, "VAULT_TOKEN": s.token, "ANSIBLE_FORKS": "5"})
    if callback:
        env["ANSIBLE_CALLBACKS_ENABLED"] = "aegis.fleet.vault_lease_revoke"
    return env


def _playbook(book: Path, inventory: Path, env: dict, extravars: dict,
              *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(PLAYBOOK_BIN), "-i", str(inventory), str(book),
                           "-e", json.dumps(extravars), *flags], env=env, capture_output=True,
                          text=True, timeout=120, check=False)


def _assert_gone(s: Setup, leases: list[str], creds: list[dict]) -> None:
    for lease in leases:
        assert not s.lease_alive(lease), f"{lease} is still valid after the run"
    for cred in creds:
        assert not s.login_exists(cred["user"]), f"login {cred['user']} is still there"
        assert not s.can_login(cred["user"], cred["password"])


def test_a_leased_login_works_during_the_run_and_is_gone_after(
        tmp_path: Path, setup: Setup, receiver: Receiver,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Two hosts, forked workers; run by ansible-runner at -vvv with --diff."""
    book, inventory = _play(tmp_path, setup)
    env = _env(setup)
    # ansible-runner writes the whole environment of the run (its own included) into
    # artifacts/<id>/command: under the runner the token comes from a file (0600)
    token_file = tmp_path / "token"
    token_file.touch(mode=0o600)
    token_file.write_text(setup.token)
    del env["VAULT_TOKEN"]
    env["VAULT_TOKEN_FILE"] = str(token_file)
    monkeypatch.delenv("VAULT_TOKEN", raising=False)
    monkeypatch.delenv("BAO_TOKEN", raising=False)
    private = tmp_path / "runner"
    private.mkdir()
    run = ansible_runner.run(private_data_dir=str(private), playbook=str(book),
                             inventory=str(inventory), envvars=env, extravars=_extravars(setup),
                             verbosity=3, cmdline="--diff", quiet=True)
    out = run.stdout.read()
    assert run.status == "successful", out[-3000:]
    creds = receiver.wait(2)
    assert sorted(c["host"] for c in creds) == ["h0", "h1"]
    assert all(c["user"].startswith("v-") for c in creds)
    leases = LEASED.findall(out)
    assert len(leases) == 2 and all(int(ttl) <= 120 for _, ttl in leases), out[-3000:]
    assert "aegis.fleet.vault_lease_revoke: revoked 2 lease(s)" in out
    _assert_gone(setup, [lease for lease, _ in leases], creds)
    # nothing secret in what Ansible printed (-vvv, --diff) nor anywhere in the artifacts
    values = [setup.api_key, setup.token] + [v for c in creds for v in (c["user"], c["password"])]
    for path in [p for p in private.rglob("*") if p.is_file()]:
        text = path.read_text(errors="replace")
        for value in values:
            assert value not in text, f"a secret value is in {path}"
    assert CANARY in out  # the search sees what -vvv prints of a no_log task's environment


def test_a_failing_play_revokes_its_leases(tmp_path: Path, setup: Setup,
                                           receiver: Receiver) -> None:
    book, inventory = _play(tmp_path, setup, [
        {"name": "Fail on purpose", "ansible.builtin.fail": {"msg": "failing on purpose"}}],
        hosts=1)
    run = _playbook(book, inventory, _env(setup), _extravars(setup), "-vvv")
    assert run.returncode == 2, run.stdout[-3000:]
    assert "failing on purpose" in run.stdout
    creds = receiver.wait(1)
    leases = [lease for lease, _ in LEASED.findall(run.stdout)]
    assert len(creds) == 1 and len(leases) == 1
    assert "revoked 1 lease(s)" in run.stdout
    _assert_gone(setup, leases, creds)
    assert not any(v in run.stdout + run.stderr for v in (creds[0]["password"], setup.api_key))


def test_a_lease_the_token_cannot_revoke_is_reported(tmp_path: Path, setup: Setup,
                                                     receiver: Receiver) -> None:
    """A token without update on sys/leases/revoke/...: the run warns, naming the lease
    and the server's answer (the lease then ends at its TTL)."""
    book, inventory = _play(tmp_path, setup, hosts=1)
    env = _env(setup) | {"VAULT_TOKEN": setup.read_only_token}
    run = _playbook(book, inventory, env, _extravars(setup))
    assert run.returncode == 0, run.stdout[-3000:]
    creds = receiver.wait(1)
    keys = setup.root.sys.list_leases(setup.db_path)["data"]["keys"]
    (lease,) = [f"{setup.db_path}/{key}" for key in keys
                if setup.lease_alive(f"{setup.db_path}/{key}")]
    warning = " ".join(run.stderr.split())
    assert f"lease not revoked: {lease}: LeaseError: HTTP 403" in warning, run.stderr
    assert "permission denied" in warning
    assert setup.login_exists(creds[0]["user"])
    assert setup.read_only_token not in run.stdout + run.stderr
    setup.root.sys.revoke_lease(lease)
    assert not setup.login_exists(creds[0]["user"])


@pytest.mark.parametrize("how", ["sigkill-without-callback", "ctrl-c-with-callback"])
def test_an_interrupted_run_still_revokes(tmp_path: Path, setup: Setup, receiver: Receiver,
                                          how: str) -> None:
    """ansible-playbook and its workers killed (SIGKILL, no callback enabled: the keepers
    revoke by themselves) or interrupted (Ctrl-C to the process group, with the callback:
    it revokes and reports before the process exits) while the run waits."""
    kill = how.startswith("sigkill")
    go = tmp_path / "go"
    book, inventory = _play(tmp_path, setup, [
        {"name": "Wait", "ansible.builtin.wait_for": {"path": str(go), "timeout": 90}}], hosts=1)
    log = tmp_path / "out.log"
    with log.open("w") as out:
        proc = subprocess.Popen([str(PLAYBOOK_BIN), "-i", str(inventory), str(book), "-vvv",
                                 "-e", json.dumps(_extravars(setup, ttl=30))],
                                env=_env(setup, callback=not kill), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        creds = receiver.wait(1)
        assert len(creds) == 1, log.read_text()[-3000:]
        (lease, ttl), = LEASED.findall(log.read_text())
        assert int(ttl) <= 30 and setup.lease_alive(lease)  # the ttl option was applied
        assert setup.root.sys.read_lease(lease)["data"]["ttl"] <= 30
        assert setup.can_login(creds[0]["user"], creds[0]["password"])
        # the run directory is private and holds the lease id only
        base = Path(tempfile.gettempdir(), f"aegis-vault-lease-{os.getuid()}")
        (run_dir,) = base.glob(f"{proc.pid}-*")
        assert run_dir.stat().st_mode & 0o777 == 0o700
        (entry,) = run_dir.glob("*.lease")
        assert entry.read_text().strip() == lease
    finally:
        os.killpg(proc.pid, signal.SIGKILL if kill else signal.SIGINT)
        proc.wait(timeout=60)
    if kill:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and setup.lease_alive(lease):
            time.sleep(0.1)
    else:
        assert "revoked 1 lease(s)" in log.read_text(), log.read_text()[-3000:]
    _assert_gone(setup, [lease], creds)
    assert not run_dir.exists() or not list(run_dir.glob("*.lease"))
    assert creds[0]["password"] not in log.read_text()


def test_bad_input_names_what_to_fix(tmp_path: Path, setup: Setup) -> None:
    cases = {
        "not allowed": f"'{setup.db_path.rsplit('/', 1)[0]}/nosuchrole'",
        "unknown path": f"'{setup.kv_path.rsplit('/', 1)[0]}/nosuchsecret'",
        "no such field": f"'{setup.kv_path}', field='nosuchfield'",
        "unreachable": f"'{setup.kv_path}', url='http://127.0.0.1:{free_port()}'",
        "plain http": f"'{setup.kv_path}', url='http://192.0.2.10:8200'",
        "not a url": f"'{setup.kv_path}', url='vault.example:8200'",
        "no token": f"'{setup.kv_path}', token=''",
        "token file": f"'{setup.kv_path}', token='', token_file='{tmp_path}/missing'",
        "bad token": f"'{setup.kv_path}', token='s.not-a-token'",
    }
    tasks = [{"name": name, "ansible.builtin.set_fact": {
        "x": f"{{{{ lookup('aegis.fleet.vault_lease', {args}) }}}}"}, "ignore_errors": True}
        for name, args in cases.items()]
    book = tmp_path / "bad.yml"
    book.write_text(json.dumps([{"name": "Bad input", "hosts": "localhost",
                                 "connection": "local", "gather_facts": False,
                                 "tasks": tasks}]))
    env = _env(setup) | {"ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
                         "ANSIBLE_LOCALHOST_WARNING": "0",
                         "ANSIBLE_INVENTORY_UNPARSED_WARNING": "0"}
    run = subprocess.run([str(PLAYBOOK_BIN), str(book)], env=env, capture_output=True,
                         text=True, timeout=120, check=False)
    doc = json.loads(run.stdout)
    msgs = {t["task"]["name"]: t["hosts"]["localhost"].get("msg", "")
            for t in doc["plays"][0]["tasks"]}
    for name in cases:
        assert doc["plays"][0]["tasks"][list(cases).index(name)]["hosts"]["localhost"]["failed"]
    assert "nosuchrole" in msgs["not allowed"] and "policy" in msgs["not allowed"]
    assert "nothing at" in msgs["unknown path"] and "nosuchsecret" in msgs["unknown path"]
    assert "check the path" in msgs["unknown path"]
    assert "no field 'nosuchfield'" in msgs["no such field"] and "api_key" in msgs["no such field"]
    assert "api_key" in msgs["no such field"] and setup.api_key not in run.stdout
    assert "cannot reach Vault at http://127.0.0.1" in msgs["unreachable"]
    assert "VAULT_ADDR" in msgs["unreachable"]
    assert "not loopback: use https://" in msgs["plain http"]
    assert "is not a URL" in msgs["not a url"]
    assert "no Vault token" in msgs["no token"] and "VAULT_TOKEN" in msgs["no token"]
    assert "cannot read token_file" in msgs["token file"]
    assert "permission denied" in msgs["bad token"] and "token" in msgs["bad token"]
    assert setup.token not in run.stdout + run.stderr
