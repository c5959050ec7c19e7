"""The agent's secret sink against the run's real OpenBao and PostgreSQL (the Vault wiring
of the aegis.fleet.vault role, TTLs of seconds): a wrapped secret_id made exactly as the
controller makes it, files rendered on a tmpfs the test mounts, a real consumer process
that holds a PostgreSQL connection with the leased login and reloads on SIGHUP, renewal
across several TTLs, a KV rotation, refusals, quarantine and a Vault outage.

The sink runs in-process, as the daemon runs it (its events go to a real spool)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
from harness_vault import PgAdmin, Wiring, pg_connect, pg_role_exists, wire

from aegis_agent.config import ControllerConfig, SecretsConfig
from aegis_agent.enforcement import Enforcement
from aegis_agent.orders import order_handlers
from aegis_agent.secrets import SecretsError, SecretSink, SinkDirError
from aegis_agent.spool import Spool
from aegis_agent.uplink import Uplink
from aegis_protocol.events import Event
from aegis_protocol.secrets import SecretsReport
from conftest import sub_prefix
from harness import openbao_dev
from harness_controller import Server, controller_server, operator_client

pytestmark = pytest.mark.integration

CONSUMER = r"""
import hashlib, os, signal, sys, time
import psycopg
db_file, kv_file, port, log = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
hup = False
def on_hup(*_):
    global hup
    hup = True
signal.signal(signal.SIGHUP, on_hup)
def connect():
    user, password = open(db_file).read().split("\n")[:2]
    return psycopg.connect(host="127.0.0.1", port=port, user=user, password=password,
                           dbname="postgres", autocommit=True, connect_timeout=3)
def kv_digest():
    try:
        return hashlib.sha256(open(kv_file, "rb").read()).hexdigest()
    except OSError as e:
        return type(e).__name__
conn = None
with open(log, "a", buffering=1) as out:
    while not os.path.exists(db_file):
        time.sleep(0.1)
    out.write(f"kv {kv_digest()}\n")
    while True:
        if hup:
            hup = False
            out.write(f"hup kv {kv_digest()}\n")
            try:
                new = connect()
                old, conn = conn, new
                if old is not None:
                    old.close()
            except Exception as e:
                out.write(f"reconnect-failed {type(e).__name__}\n")
        if conn is None:
            try:
                conn = connect()
            except Exception as e:
                out.write(f"connect-failed {type(e).__name__}\n")
        if conn is not None:
            try:
                out.write(f"ok {conn.execute('select current_user').fetchone()[0]}\n")
            except Exception as e:
                out.write(f"fail {type(e).__name__}\n")
                conn = None
        time.sleep(0.5)
"""


# -- helpers ---------------------------------------------------------------------------------
class Recorder:
    """The daemon's record(): events into a real spool, kept here too."""

    def __init__(self, spool_dir: Path) -> None:
        self.spool = Spool(spool_dir, 1024 * 1024, 64 * 1024, 0.8)
        self.events: list[Event] = []

    def __call__(self, events: list[Event]) -> None:
        self.spool.append(events)
        self.events.extend(events)

    def what(self, name: str) -> list[Event]:
        return [e for e in self.events if e.data.get("what") == name]


def files(w: Wiring, reload: list[str] | None = None) -> list[dict]:
    more = {"reload": reload} if reload else {}
    return [{"name": "api_key", "kv": {"mount": w.names["vault_kv_mount"], "path": "web/app",
                                       "field": "api_key"}, **more},
            {"name": "db", "database": {"mount": w.names["vault_database_mount"], "role": "web"},
             "template": "{username}\n{password}\n", **more}]


def config(w: Wiring, d: Path, **over: object) -> SecretsConfig:
    return SecretsConfig.model_validate({
        "url": w.bao.addr, "approle_mount": w.approle_mount, "role": w.approle("web"),
        "role_id": w.role_ids["web"], "dir": str(d), "revoke_delay": 1.0,
        "files": files(w), **over})


def wrapped(w: Wiring, role: str = "web") -> str:
    """A wrapped secret_id, made as the controller makes it (its narrow token)."""
    r = httpx.post(f"{w.bao.addr}/v1/auth/{w.approle_mount}/role/{w.approle(role)}/secret-id",
                   headers={"X-Vault-Token": w.controller_token, "X-Vault-Wrap-TTL": "60s"})
    r.raise_for_status()
    return r.json()["wrap_info"]["token"]


def wrapping_valid(w: Wiring, token: str) -> bool:
    return httpx.post(f"{w.bao.addr}/v1/sys/wrapping/lookup",
                      json={"token": token}).status_code == 200


def accessor_alive(w: Wiring, accessor: str) -> bool:
    r = httpx.post(f"{w.bao.addr}/v1/auth/token/lookup-accessor",
                   headers={"X-Vault-Token": w.bao.token}, json={"accessor": accessor})
    return r.status_code == 200


def until(check: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def no_secret_in(paths: list[Path], secrets: list[str], text: str = "") -> None:
    for s in secrets:
        assert s not in text, "a secret value is in the captured logs"
        for p in paths:
            for f in (p.rglob("*") if p.is_dir() else [p]):
                if f.is_file():
                    assert s.encode() not in f.read_bytes(), f"a secret value is in {f}"


# -- the full path: fetch, renew, rotate, quarantine ----------------------------------------
def test_sink_serves_renews_rotates_and_wipes_on_quarantine(
        vault_wiring: Wiring, tmpfs_dir: Path, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    w = vault_wiring
    port = w.pg.server.port
    log_file = tmp_path / "consumer.log"
    consumer = subprocess.Popen([sys.executable, "-c", CONSUMER, str(tmpfs_dir / "db"),
                                 str(tmpfs_dir / "api_key"), str(port), str(log_file)],
                                start_new_session=True)
    rec = Recorder(tmp_path / "spool")
    sink = SecretSink(config(w, tmpfs_dir, files=files(w, ["kill", "-HUP", str(consumer.pid)])),
                      rec)
    try:
        started = time.time()
        report = SecretsReport.model_validate_json(
            sink.fetch({"role": w.approle("web"), "wrapped_secret_id": wrapped(w)}))
        assert report.role == w.approle("web") and report.files == ["api_key", "db"]
        assert len(report.leases) == 1 and report.leases[0].startswith(
            f"{w.names['vault_database_mount']}/creds/web/")
        assert report.token_ttl == 6
        assert started + 80 <= report.expires_at <= started + 92  # the role's max TTL, 90 s
        token = sink._held.login.token
        for name in ("api_key", "db"):
            st = (tmpfs_dir / name).stat()
            assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o400, 0, 0)
        assert (tmpfs_dir / "api_key").read_text() == w.kv_values["web"]
        user, password = (tmpfs_dir / "db").read_text().split("\n")[:2]
        assert report.logins == [user]
        with pg_connect(port, user, password) as c:
            assert c.execute("select current_user").fetchone()[0] == user
        assert [e.severity for e in rec.what("secrets_fetched")] == ["info"]

        # three TTLs and more: token and lease renewed, the consumer never cut off
        until(lambda: log_file.exists() and "ok " in log_file.read_text(), 15, "the consumer")
        time.sleep(20)
        lines = log_file.read_text().splitlines()
        assert sum(line == f"ok {user}" for line in lines) >= 30, lines[-5:]
        assert not [line for line in lines if "fail" in line], lines
        assert accessor_alive(w, report.accessor) and pg_role_exists(port, user)
        assert sink.status()["state"] == "held" and not rec.what("secrets_renew_failed")

        # a KV rotation reaches the file and the consumer's reload, the sink runs on
        new_value = "rotated-" + os.urandom(6).hex()
        old_value = w.kv_values["web"]
        w.set_kv("web", new_value)
        until(lambda: (tmpfs_dir / "api_key").read_text() == new_value, 10, "the new KV value")
        digest = hashlib.sha256(new_value.encode()).hexdigest()
        until(lambda: f"hup kv {digest}" in log_file.read_text(), 5, "the consumer's reload")
        rotated = rec.what("secrets_rotated")
        assert rotated and "api_key" in str(rotated[-1].data["files"])
        assert (tmpfs_dir / "api_key").stat().st_mode & 0o777 == 0o400
        status = json.dumps(sink.status())
        assert report.accessor in status and new_value not in status and password not in status

        # quarantine (the daemon's hook, order path; segmentation is off in this test)
        enf = Enforcement(None, None, None, rec, on_quarantine=[sink.wipe])
        with pytest.raises(ValueError, match="segmentation is off"):
            enf.quarantine("hard", reason="test", source="order")
        assert not (tmpfs_dir / "api_key").exists() and not (tmpfs_dir / "db").exists()
        assert [p.name for p in tmpfs_dir.iterdir()] == []
        assert sink._held is None and sink.status()["state"] == "wiped"
        until(lambda: not accessor_alive(w, report.accessor), 10, "the token's revocation")
        r = httpx.post(f"{w.bao.addr}/v1/auth/token/lookup",
                       headers={"X-Vault-Token": w.bao.token}, json={"token": token})
        assert r.status_code in (400, 403)
        until(lambda: not pg_role_exists(port, user), 15, "the database login's removal")
        mark = len(log_file.read_text().splitlines())
        until(lambda: any(line.startswith(("fail", "connect-failed"))
                          for line in log_file.read_text().splitlines()[mark - 1:]),
              5, "the consumer's connection to fail")
        wiped = rec.what("secrets_wiped")
        assert len(wiped) == 1 and "quarantine" in str(wiped[0].data["reason"])

        # the controller says quarantined: nothing served, the order is not even unwrapped
        sink.set_trust("quarantined")
        again = wrapped(w)
        with pytest.raises(SecretsError, match="not trusted"):
            sink.fetch({"role": w.approle("web"), "wrapped_secret_id": again})
        assert wrapping_valid(w, again) and list(tmpfs_dir.iterdir()) == []
        time.sleep(1.5)  # the revoke thread's log line, if any, is captured too
        no_secret_in([tmp_path / "spool", tmpfs_dir], [token, password, old_value, new_value],
                     caplog.text)
    finally:
        sink.close()
        os.killpg(consumer.pid, signal.SIGKILL)
        consumer.wait(timeout=10)
        rec.spool.close()


def test_refresh_switches_token_and_revokes_the_old_one(vault_wiring: Wiring, tmpfs_dir: Path,
                                                         tmp_path: Path) -> None:
    w = vault_wiring
    rec = Recorder(tmp_path / "spool")
    sink = SecretSink(config(w, tmpfs_dir), rec)
    try:
        first = SecretsReport.model_validate_json(
            sink.fetch({"role": w.approle("web"), "wrapped_secret_id": wrapped(w)}))
        second = SecretsReport.model_validate_json(
            sink.fetch({"role": w.approle("web"), "wrapped_secret_id": wrapped(w)}))
        assert second.accessor != first.accessor and second.logins != first.logins
        user, password = (tmpfs_dir / "db").read_text().split("\n")[:2]
        assert [user] == second.logins
        with pg_connect(w.pg.server.port, user, password):
            pass
        until(lambda: not accessor_alive(w, first.accessor), 10, "the old token's revocation")
        until(lambda: not pg_role_exists(w.pg.server.port, first.logins[0]), 15,
              "the old login's removal")
        assert accessor_alive(w, second.accessor)
        assert rec.what("secrets_fetched")[-1].data["refresh"] is True
        # a heartbeat answer that says the node is no longer trusted wipes at once
        sink.set_trust("trusted")
        assert (tmpfs_dir / "db").exists()
        sink.set_trust("suspect")
        assert list(tmpfs_dir.iterdir()) == [] and sink.status()["state"] == "wiped"
        assert rec.what("secrets_wiped")[-1].data["reason"] == "controller trust state suspect"
        until(lambda: not accessor_alive(w, second.accessor), 10, "the token's revocation")
    finally:
        sink.wipe("test end")
        sink.close()
        rec.spool.close()


# -- refusals ------------------------------------------------------------------------------
@dataclass
class Refusing:
    sink: SecretSink
    rec: Recorder


@pytest.fixture
def refusing(vault_wiring: Wiring, tmpfs_dir: Path, tmp_path: Path) -> Iterator[Refusing]:
    rec = Recorder(tmp_path / "spool")
    sink = SecretSink(config(vault_wiring, tmpfs_dir), rec)
    try:
        yield Refusing(sink, rec)
    finally:
        sink.close()
        rec.spool.close()
    assert list(tmpfs_dir.iterdir()) == [], "a refused order left files"


def test_spent_wrapping_token_is_critical_and_serves_nothing(vault_wiring: Wiring,
                                                            refusing: Refusing) -> None:
    w, sink, rec = vault_wiring, refusing.sink, refusing.rec
    token = wrapped(w)
    # someone else unwraps it first
    assert httpx.post(f"{w.bao.addr}/v1/sys/wrapping/unwrap",
                      headers={"X-Vault-Token": token}).status_code == 200
    with pytest.raises(SecretsError, match="already unwrapped or it expired"):
        sink.fetch({"role": w.approle("web"), "wrapped_secret_id": token})
    [event] = rec.what("secrets_unwrap_failed")
    assert event.severity == "critical" and token not in event.model_dump_json()
    assert sink._held is None and sink.status()["state"] == "empty"


def test_wrapping_token_of_another_path_is_not_unwrapped(vault_wiring: Wiring,
                                                        refusing: Refusing) -> None:
    w, sink, rec = vault_wiring, refusing.sink, refusing.rec
    r = httpx.post(f"{w.bao.addr}/v1/sys/wrapping/wrap",
                   headers={"X-Vault-Token": w.bao.token, "X-Vault-Wrap-TTL": "60s"},
                   json={"secret_id": "made-up"})
    foreign = r.json()["wrap_info"]["token"]
    with pytest.raises(SecretsError, match="created by 'sys/wrapping/wrap'"):
        sink.fetch({"role": w.approle("web"), "wrapped_secret_id": foreign})
    # the other node's secret_id, sent as if it were ours
    other = wrapped(w, "db")
    with pytest.raises(SecretsError, match="not this node's secret_id"):
        sink.fetch({"role": w.approle("web"), "wrapped_secret_id": other})
    assert [e.severity for e in rec.what("secrets_unwrap_failed")] == ["critical", "critical"]
    assert wrapping_valid(w, foreign) and wrapping_valid(w, other)  # not spent by us
    assert httpx.post(f"{w.bao.addr}/v1/sys/wrapping/unwrap",
                      headers={"X-Vault-Token": foreign}).json()["data"] == {"secret_id": "made-up"}


def test_order_for_another_role_is_refused(vault_wiring: Wiring, refusing: Refusing) -> None:
    w = vault_wiring
    token = wrapped(w, "db")
    with pytest.raises(SecretsError, match=f"AppRole '{w.approle('db')}' refused"):
        refusing.sink.fetch({"role": w.approle("db"), "wrapped_secret_id": token})
    assert wrapping_valid(w, token) and not refusing.rec.what("secrets_fetched")


def test_a_secret_that_cannot_be_rendered_serves_nothing(vault_wiring: Wiring, tmpfs_dir: Path,
                                                         tmp_path: Path) -> None:
    """A KV field that is not there: the new token is revoked, no file is written."""
    w = vault_wiring
    rec = Recorder(tmp_path / "spool")
    bad = files(w)
    bad[0]["kv"]["field"] = "no_such_field"
    sink = SecretSink(config(w, tmpfs_dir, files=bad), rec)
    with pytest.raises(SecretsError, match="has no field 'no_such_field'") as e:
        sink.fetch({"role": w.approle("web"), "wrapped_secret_id": wrapped(w)})
    assert w.kv_values["web"] not in str(e.value)
    assert list(tmpfs_dir.iterdir()) == [] and sink.status()["state"] == "empty"
    sink.close()
    rec.spool.close()


def test_directory_not_on_tmpfs_is_refused_before_unwrapping(vault_wiring: Wiring,
                                                             tmp_path: Path) -> None:
    w = vault_wiring
    plain = tmp_path / "plain"
    plain.mkdir()
    rec = Recorder(tmp_path / "spool")
    sink = SecretSink(config(w, plain), rec)
    token = wrapped(w)
    with pytest.raises(SinkDirError, match=r"is on ext4, not tmpfs|not tmpfs"):
        sink.fetch({"role": w.approle("web"), "wrapped_secret_id": token})
    assert wrapping_valid(w, token) and list(plain.iterdir()) == []
    with pytest.raises(SinkDirError, match="does not exist: mount a tmpfs"):
        SecretSink(config(w, tmp_path / "missing"), rec).fetch(
            {"role": w.approle("web"), "wrapped_secret_id": token})
    rec.spool.close()


# -- Vault goes away ---------------------------------------------------------------------------
def test_vault_outage_keeps_files_until_their_leases_end(pg_admin, tmpfs_dir: Path,
                                                         tmp_path: Path) -> None:
    port = pg_admin.server.port
    logins: list[str] = []
    with openbao_dev(sub_prefix()) as bao:
        w = wire(bao, pg_admin, tmp_path / "wiring", token_ttl="6s",  # noqa: S106
                 token_max_ttl="90s", db_ttl="6s", db_max_ttl="90s")  # noqa: S106
        rec = Recorder(tmp_path / "spool")
        sink = SecretSink(config(w, tmpfs_dir), rec)
        try:
            report = SecretsReport.model_validate_json(
                sink.fetch({"role": w.approle("web"), "wrapped_secret_id": wrapped(w)}))
            logins = report.logins
            fetched = time.monotonic()
            os.killpg(bao.pid, signal.SIGTERM)  # Vault is gone
            until(lambda: rec.what("secrets_renew_failed"), 10, "the renewal to fail")
            # nothing is wiped before its lease ends
            assert (tmpfs_dir / "api_key").exists() and (tmpfs_dir / "db").exists()
            assert time.monotonic() - fetched < 6
            until(lambda: not (tmpfs_dir / "db").exists()
                  and not (tmpfs_dir / "api_key").exists(), 10, "the expired files' wipe")
            assert time.monotonic() - fetched >= 5.5  # not before the 6 s TTL ran out
            time.sleep(3)  # more failed tries: still one warning for the outage
            assert len(rec.what("secrets_renew_failed")) == 1
            assert rec.what("secrets_renew_failed")[0].severity == "warning"
            expired = rec.what("secrets_expired")
            assert expired and {n for e in expired
                                for n in str(e.data.get("files", "")).split(",")} >= {"db"}
            assert sink.status()["state"] == "expired"
            assert [p.name for p in tmpfs_dir.iterdir()] == []
        finally:
            sink.close()
            rec.spool.close()
            # the dead server cannot drop its logins: do it here
            with psycopg.connect(f"host=127.0.0.1 port={port} user=aegis dbname=postgres",
                                 autocommit=True) as conn:
                for login in logins:
                    with contextlib.suppress(psycopg.Error):
                        conn.execute(f'DROP ROLE IF EXISTS "{login}"')  # type: ignore[arg-type]


# -- through the controller link: signed orders as the daemon runs them -------------------------
def test_orders_from_the_controller_reach_the_sink(vault_wiring: Wiring, tmpfs_dir: Path,
                                                   tmp_path: Path) -> None:
    """fetch-secrets, rotate secrets and quarantine as signed orders from a real
    controller, run by the agent's Uplink with the daemon's handlers."""
    w = vault_wiring
    node = "sinknode1"
    rec = Recorder(tmp_path / "spool")
    sink = SecretSink(config(w, tmpfs_dir), rec)
    enforcement = Enforcement(None, None, None, rec, on_quarantine=[sink.wipe])
    with controller_server(sub_prefix(), None) as server:
        token = tmp_path / "token"
        token.write_text(server.token(node))
        cfg = ControllerConfig(url=server.url, ca_file=server.state / "ca" / "ca.pem",
                               token_file=token, state_dir=tmp_path / "state",
                               golden_file=tmp_path / "golden.json")
        up = Uplink(cfg, node, rec.spool, order_handlers(enforcement), secrets=sink)
        up.next_attest = float("inf")
        up.enroll()
        up.attest()  # one measurement, then trusted against it: the controller hands
        # secrets orders to trusted nodes only (the profile's attest order runs in a tick)
        _trust(server, node, tmp_path, lambda: up.tick(now=time.monotonic() + 10_000))

        def order(kind: str, **args: object) -> dict:
            with operator_client(server) as op:
                r = op.post("/v1/orders", json={"node_id": node, "kind": kind, "args": args})
            assert r.status_code == 201, r.text
            oid = r.json()["order"]["id"]
            up.tick(now=time.monotonic() + 10_000)
            rows = [json.loads(line) for line in server.ctl("orders").stdout.splitlines()]
            return next(o for o in rows if o["order_id"] == oid)

        try:
            done = order("fetch-secrets", role=w.approle("web"), wrapped_secret_id=wrapped(w))
            assert done["status"] == "done", done
            report = SecretsReport.model_validate_json(done["detail"])
            assert report.files == ["api_key", "db"] and (tmpfs_dir / "db").exists()
            first_login = (tmpfs_dir / "db").read_text().split("\n")[0]

            done = order("rotate", what="secrets")
            assert done["status"] == "done", done
            assert (tmpfs_dir / "db").read_text().split("\n")[0] != first_login  # a new login

            done = order("fetch-secrets", role=w.approle("db"), wrapped_secret_id=wrapped(w, "db"))
            assert done["status"] == "failed" and "refused" in done["detail"]

            done = order("quarantine", level="soft")
            assert done["status"] == "failed"  # segmentation is off here; the wipe ran first
            assert list(tmpfs_dir.iterdir()) == []
            assert rec.what("secrets_wiped")
            until(lambda: not accessor_alive(w, report.accessor), 10, "the token's revocation")
        finally:
            sink.close()
            rec.spool.close()


def _trust(server: Server, node: str, tmp_path: Path,
           pump: Callable[[], object] = lambda: None) -> None:
    """Trusted against a profile of its first measurement: the controller delivers
    fetch-secrets orders to trusted nodes only (aegis_controller.orders.Orders.pending).
    ``pump``: one round of an in-process uplink (a daemon runs its own)."""
    profile = tmp_path / "profile.json"
    profile.write_text("{}")
    out = server.ctl("profile", "set", node, str(profile))
    assert out.returncode == 0, out.stderr
    def trusted() -> bool:
        pump()
        return json.loads(server.ctl("node", "show", node).stdout or "{}").get("state") \
            == "trusted"

    until(trusted, 30, "trusted")


# -- the real daemon ------------------------------------------------------------------------------
def test_the_daemon_serves_secrets_from_a_controller_order(vault_wiring: Wiring, tmpfs_dir: Path,
                                                           tmp_path: Path) -> None:
    """``aegis-agent run`` (segmentation and monitors off) with a real controller: a
    fetch-secrets order renders the files, ``aegis-agent status`` shows the sink without a
    value, a quarantine order wipes them; nothing secret in its log, spool or state."""
    w = vault_wiring
    node = "sinkd-" + os.urandom(3).hex()
    agent_bin = str(Path(sys.executable).with_name("aegis-agent"))
    with controller_server(sub_prefix(), None) as server:
        (tmp_path / "token").write_text(server.token(node))
        cfg = {"node_id": node, "monitors": {"exec": False, "connect": False},
               "spool": {"dir": str(tmp_path / "spool")},
               "control": {"socket": str(tmp_path / "run" / "agent.sock")},
               "controller": {"url": server.url, "ca_file": str(server.state / "ca" / "ca.pem"),
                              "token_file": str(tmp_path / "token"),
                              "state_dir": str(tmp_path / "state"),
                              "golden_file": str(tmp_path / "golden.json"), "interval": 0.5,
                              "attest_interval": 3600, "max_backoff": 1},
               "secrets": json.loads(config(w, tmpfs_dir).model_dump_json())}
        config_file = tmp_path / "agent.yaml"
        config_file.write_text(json.dumps(cfg))
        log_file = tmp_path / "daemon.log"

        def cli(*args: str) -> dict:
            p = subprocess.run([agent_bin, "--config", str(config_file), *args],
                               capture_output=True, text=True, timeout=30, check=False)
            assert p.returncode == 0, p.stderr
            return json.loads(p.stdout)

        def order(kind: str, **args: object) -> dict:
            with operator_client(server) as op:
                r = op.post("/v1/orders", json={"node_id": node, "kind": kind, "args": args})
            assert r.status_code == 201, r.text
            oid = r.json()["order"]["id"]

            def row() -> dict | None:
                rows = [json.loads(line) for line in server.ctl("orders").stdout.splitlines()]
                o = next(o for o in rows if o["order_id"] == oid)
                return o if o["status"] != "pending" else None
            until(row, 30, f"the {kind} order's acknowledgment")
            return row()  # type: ignore[return-value]

        with log_file.open("w") as out:
            proc = subprocess.Popen([agent_bin, "--config", str(config_file), "run"],
                                    stdout=out, stderr=subprocess.STDOUT)
        try:
            until((tmp_path / "state" / "node.pem").exists, 30, "enrollment")
            until(lambda: json.loads(server.ctl("node", "show", node).stdout or "{}")
                  .get("measurement"), 30, "the first attestation")
            _trust(server, node, tmp_path)
            assert cli("status")["secrets"]["state"] == "empty"
            done = order("fetch-secrets", role=w.approle("web"), wrapped_secret_id=wrapped(w))
            assert done["status"] == "done", done
            report = SecretsReport.model_validate_json(done["detail"])
            value = (tmpfs_dir / "api_key").read_text()
            password = (tmpfs_dir / "db").read_text().split("\n")[1]
            status = cli("status")["secrets"]
            assert status["state"] == "held" and status["accessor"] == report.accessor
            assert status["files"] == ["api_key", "db"] and status["next_renewal_s"] <= 6
            time.sleep(8)  # renewed past its first TTL inside the daemon
            assert accessor_alive(w, report.accessor)

            done = order("quarantine", level="hard", reason="test")
            assert done["status"] == "failed"  # segmentation is off; the wipe ran first
            assert list(tmpfs_dir.iterdir()) == []
            assert cli("status")["secrets"]["state"] == "wiped"
            until(lambda: not accessor_alive(w, report.accessor), 10, "the token's revocation")
            events = [e["data"]["what"] for e in map(json.loads, subprocess.run(
                [agent_bin, "--config", str(config_file), "events", "--limit", "1000"],
                capture_output=True, text=True, check=True).stdout.splitlines())
                if e["kind"] == "agent"]
            assert "secrets_fetched" in events and "secrets_wiped" in events
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        no_secret_in([tmp_path / "state", tmp_path / "spool", log_file], [value, password])


def test_a_quarantine_during_a_fetch_serves_nothing(vault_wiring: Wiring, refusing: Refusing,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The quarantine lands after the login, before the files: the new token is revoked and
    no file is written (the interleaving is made deterministic by wrapping _log_in)."""
    w, sink = vault_wiring, refusing.sink
    logins: list[str] = []
    log_in = sink._log_in

    def then_quarantine(order: object) -> object:
        held = log_in(order)
        logins.append(held.login.accessor)
        sink.wipe("quarantine (test)")
        return held

    monkeypatch.setattr(sink, "_log_in", then_quarantine)
    with pytest.raises(SecretsError, match="abandoned"):
        sink.fetch({"role": w.approle("web"), "wrapped_secret_id": wrapped(w)})
    assert logins and sink.status()["state"] == "empty"
    until(lambda: not accessor_alive(w, logins[0]), 10, "the abandoned token's revocation")


def test_a_database_lease_near_its_max_ttl_gets_a_new_login(pg_admin: PgAdmin, tmpfs_dir: Path,
                                                             tmp_path: Path) -> None:
    """Database max TTL 15 s under a token that lives on: before the lease's end the sink
    reads a new login, re-renders and runs the reload; the token stays the same."""
    marker = tmp_path / "reloaded"
    with openbao_dev(sub_prefix()) as bao:
        w = wire(bao, pg_admin, tmp_path / "wiring", token_ttl="6s",  # noqa: S106
                 token_max_ttl="90s", db_ttl="6s", db_max_ttl="15s")  # noqa: S106
        rec = Recorder(tmp_path / "spool")
        sink = SecretSink(config(w, tmpfs_dir, files=files(w, ["touch", str(marker)])), rec)
        logins: list[str] = []
        try:
            report = SecretsReport.model_validate_json(
                sink.fetch({"role": w.approle("web"), "wrapped_secret_id": wrapped(w)}))
            first = report.logins[0]
            logins.append(first)
            until(lambda: (tmpfs_dir / "db").read_text().split("\n")[0] != first, 25,
                  "a new database login")
            user, password = (tmpfs_dir / "db").read_text().split("\n")[:2]
            logins.append(user)
            with pg_connect(pg_admin.server.port, user, password) as c:
                assert c.execute("select current_user").fetchone()[0] == user
            assert marker.exists()
            assert any("new database login" in str(e.data.get("cause"))
                       for e in rec.what("secrets_rotated"))
            assert sink.status()["accessor"] == report.accessor  # same token
            assert not rec.what("secrets_expired")
        finally:
            sink.wipe("test end")
            sink.close()
            rec.spool.close()
            # the token's revocation drops both logins (leases of the token) while the
            # server still runs
            until(lambda: not any(pg_role_exists(pg_admin.server.port, u) for u in logins),
                  15, "the logins' removal")
