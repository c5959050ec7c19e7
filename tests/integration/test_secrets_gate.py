"""The controller's secrets gate end to end: a real `aegis-controller serve` with its narrow
Vault token, the real OpenBao and PostgreSQL wired by the aegis.fleet.vault role, and the
test playing the node's agent with hvac (unwrap, check creation_path, log in, read the
database credentials, acknowledge with a signed SecretsReport — or never answer, as if
killed with -9). The controller reaches OpenBao through a TCP relay the test can cut, to
make the server unreachable for real."""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import hvac
import psycopg
import pytest
from harness_vault import Wiring, pg_connect, pg_role_exists, wire
from hvac import exceptions as hvac_errors

from aegis_agent.measure import collect
from aegis_controller.secrets.store import fetch_backoff
from aegis_protocol import routes
from aegis_protocol.attestation import ExpectedProfile
from aegis_protocol.enrollment import Heartbeat
from aegis_protocol.events import Event, EventBatch
from aegis_protocol.orders import OrderAck, sign_ack
from aegis_protocol.secrets import SECRETS_UNWRAP_FAILED, SecretsReport, secret_id_path
from harness_controller import Node, Server, attest, enroll, new_node, node_tree, operator_client

pytestmark = pytest.mark.integration

NODE = "web1"


class Relay:
    """A TCP relay from a fixed loopback port to ``target``; :meth:`cut` closes the port
    and every connection (the server is unreachable), :meth:`restore` opens it again."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            if self._listener is not None:
                with contextlib.suppress(OSError):
                    self._listener.shutdown(socket.SHUT_RDWR)
                self._listener.close()
                self._listener = None
            for c in self._conns:
                with contextlib.suppress(OSError):
                    c.shutdown(socket.SHUT_RDWR)
                c.close()
            self._conns.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            # the 5 s was for connecting: left on, an idle keep-alive connection was cut
            # after 5 s, even while a request was waiting for its answer
            upstream.settimeout(None)
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    upstream.close()
                    return
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)


@pytest.fixture(scope="module")
def wiring(openbao, pg_admin, tmp_path_factory: pytest.TempPathFactory) -> Wiring:
    """The vault role converged with minutes-long TTLs: what disappears here disappears
    because the controller revoked it, not because a lease ran out."""
    return wire(openbao, pg_admin, tmp_path_factory.mktemp("secrets-gate"))


@dataclass
class Gate:
    server: Server
    relay: Relay
    w: Wiring
    node: Node
    root: Path
    serve_args: tuple[str, ...] = ()

    def ctl(self, *args: str) -> object:
        return self.server.ctl(*args)

    def ledger(self) -> list[dict]:
        out = self.server.ctl("ledger", "show")
        assert out.returncode == 0, out.stderr
        return [json.loads(line) for line in out.stdout.splitlines()]

    def secret_events(self, event: str) -> list[dict]:
        return [r["body"] for r in self.ledger()
                if r["kind"] == "secret_lease" and r["body"].get("event") == event]

    def status(self) -> dict:
        out = self.server.ctl("node", "secrets", NODE)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def heartbeat(self) -> dict:
        with self.node.client(self.server) as c:
            r = c.post(routes.HEARTBEAT, json=Heartbeat(
                node_id=NODE, boot_id="boot-1").model_dump(mode="json"))
        assert r.status_code == 200, r.text
        return r.json()

    def orders(self) -> list[dict]:
        with self.node.client(self.server) as c:
            r = c.get(routes.ORDERS)
        assert r.status_code == 200, r.text
        return [o for o in r.json() if o["order"]["kind"] == "fetch-secrets"]

    def attest(self) -> dict:
        return attest(self.server, self.node, self.root)

    def ack(self, order: dict, status: str, detail: str) -> dict:
        ack = sign_ack(self.node.identity, OrderAck(  # type: ignore[attr-defined]
            order_id=order["order"]["id"], node_id=NODE, status=status, detail=detail,
            at=int(time.time())))
        with self.node.client(self.server) as c:
            r = c.post(routes.order_ack(order["order"]["id"]), json=ack.model_dump(mode="json"))
        assert r.status_code == 200, r.text
        return r.json()


def _wait(what: Callable[[], object], timeout: float = 30, every: float = 0.3) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = what()
        if found:
            return found
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _gate(request: pytest.FixtureRequest, w: Wiring, db: str | None,
          tmp: Path, wrap_ttl: int = 30) -> Iterator[Gate]:
    host, port = w.bao.addr.removeprefix("http://").rsplit(":", 1)
    relay = Relay((host, int(port)))
    relay.restore()
    state = Path(tempfile.mkdtemp(prefix="secrets-gate-ctl-"))
    srv = Server(state, db)
    try:
        assert srv.ctl("keys", "init").returncode == 0
        args = ("--secrets-token-file", str(w.controller_token_file),
                "--vault-addr", relay.url, "--secrets-approle-mount", w.approle_mount,
                "--secrets-prefix", w.prefix, "--secrets-wrap-ttl", str(wrap_ttl),
                "--secrets-verify-dsn",
                f"host=127.0.0.1 port={w.pg.server.port} user=aegis dbname=postgres")
        srv.start(*args)
        node = new_node(srv, NODE)
        assert enroll(srv, node, srv.token(NODE)).status_code == 200
        yield Gate(srv, relay, w, node, node_tree(tmp / "root"), args)
    finally:
        if srv.proc is not None:
            srv.kill()
        relay.cut()
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def gate_db(request: pytest.FixtureRequest, wiring: Wiring, tmp_path: Path) -> Iterator[Gate]:
    db = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    yield from _gate(request, wiring, db, tmp_path)


@pytest.fixture
def gate(request: pytest.FixtureRequest, wiring: Wiring, tmp_path: Path) -> Iterator[Gate]:
    yield from _gate(request, wiring, None, tmp_path)


@pytest.fixture
def gate_short_wrap(request: pytest.FixtureRequest, wiring: Wiring,
                    tmp_path: Path) -> Iterator[Gate]:
    yield from _gate(request, wiring, None, tmp_path, wrap_ttl=4)


def _trust(g: Gate, role: str | None = "web") -> None:
    if role:
        out = g.server.ctl("node", "secrets-role", NODE, role)
        assert out.returncode == 0, out.stderr
    expected = ExpectedProfile(golden=collect(root=g.root, sshd=False).golden)
    with operator_client(g.server) as op:
        r = op.put(f"/v1/nodes/{NODE}/profile", json=expected.model_dump(mode="json"))
    assert r.status_code == 204, r.text
    assert g.attest()["state"] == "trusted"


@dataclass
class Fetched:
    order: dict
    report: SecretsReport
    token: str
    username: str
    password: str
    secret_id: str
    wrapping_token: str


def _play_agent(g: Gate, order: dict, *, expires_in: int | None = None) -> Fetched:
    """What the agent does with a fetch-secrets order (checks included)."""
    w = g.w
    args = order["order"]["args"]
    assert args["role"] == w.approle("web")
    wrapping = args["wrapped_secret_id"]
    looked = hvac.Client(url=w.bao.addr).adapter.post(
        "/v1/sys/wrapping/lookup", json={"token": wrapping})["data"]
    assert looked["creation_path"] == secret_id_path(w.approle_mount, w.approle("web"))
    assert 0 < int(looked["creation_ttl"]) <= 30
    secret_id = hvac.Client(url=w.bao.addr, token=wrapping).sys.unwrap()["data"]["secret_id"]
    with pytest.raises(hvac_errors.VaultError):  # single use
        hvac.Client(url=w.bao.addr, token=wrapping).sys.unwrap()
    agent = hvac.Client(url=w.bao.addr)
    auth = agent.auth.approle.login(w.role_ids["web"], secret_id,
                                    mount_point=w.approle_mount)["auth"]
    creds = agent.read(f"{w.names['vault_database_mount']}/creds/web")
    now = int(time.time())
    report = SecretsReport(role=w.approle("web"), accessor=auth["accessor"],
                           token_ttl=auth["lease_duration"],
                           expires_at=now + (expires_in or auth["lease_duration"]),
                           leases=[creds["lease_id"]], logins=[creds["data"]["username"]],
                           files=["/run/aegis/secrets/db.env"])
    return Fetched(order, report, auth["client_token"], creds["data"]["username"],
                   creds["data"]["password"], secret_id, wrapping)


def _fetch(g: Gate, *, expires_in: int | None = None) -> Fetched:
    order = _wait(g.orders)[0]  # type: ignore[index]
    got = _play_agent(g, order, expires_in=expires_in)
    assert g.ack(order, "done", got.report.model_dump_json())["status"] == "done"
    return got


def _token_alive(w: Wiring, accessor: str) -> bool:
    try:
        w.root.adapter.post("/v1/auth/token/lookup-accessor", json={"accessor": accessor})
    except hvac_errors.VaultError:
        return False
    return True


def _no_secret_leaked(g: Gate, *values: str) -> None:
    ledger = json.dumps(g.ledger())
    log = (g.server.state / "serve.log").read_text()
    with g.server.engine().connect() as conn:
        stored = " ".join(r[0] for r in conn.exec_driver_sql("SELECT signed FROM orders"))
    for value in values:
        assert value not in ledger
        assert value not in log
        assert value not in stored


def test_trusted_node_gets_one_wrapped_secret_id_and_reports_it(gate_db: Gate) -> None:
    g = gate_db
    _trust(g)
    got = _fetch(g)
    assert g.heartbeat()["trust"] == "trusted"
    time.sleep(2)  # heartbeats of a node holding fresh secrets make no new order
    assert g.heartbeat()["trust"] == "trusted" and g.orders() == []
    orders = [r for r in g.ledger() if r["kind"] == "order"
              and r["body"]["kind"] == "fetch-secrets"]
    assert len(orders) == 1
    recorded = orders[0]["body"]["args"]
    assert recorded["creation_path"] == secret_id_path(g.w.approle_mount, g.w.approle("web"))
    assert recorded["wrap_accessor"] and "wrapped_secret_id" not in recorded
    fetched = g.secret_events("fetched")
    assert [f["accessor"] for f in fetched] == [got.report.accessor]
    assert fetched[0]["logins"] == [got.username]
    # the token names its node (the secret_id's metadata the controller set)
    meta = g.w.root.adapter.post("/v1/auth/token/lookup-accessor",
                                 json={"accessor": got.report.accessor})["data"]["meta"]
    assert meta["aegis_node"] == NODE and meta["role_name"] == g.w.approle("web")
    status = g.status()
    assert status["role"] == "web" and status["grants"][0]["accessor"] == got.report.accessor
    assert status["grants"][0]["revoked_at"] is None
    _no_secret_leaked(g, got.token, got.wrapping_token, got.password, got.secret_id)


def test_enrolled_suspect_and_roleless_nodes_get_nothing(gate: Gate) -> None:
    g = gate
    assert g.server.ctl("node", "secrets-role", NODE, "web").returncode == 0
    assert g.heartbeat()["trust"] == "enrolled"
    # a profile the node does not match: suspect
    with operator_client(g.server) as op:
        r = op.put(f"/v1/nodes/{NODE}/profile", json=ExpectedProfile(
            golden={"/etc/aegis.conf": "0" * 64}).model_dump(mode="json"))
    assert r.status_code == 204
    assert g.attest()["state"] == "suspect"
    assert g.heartbeat()["trust"] == "suspect"
    # trusted by an operator, but without a role
    assert g.server.ctl("node", "secrets-role", NODE, "--clear").returncode == 0
    out = g.server.ctl("node", "trust", NODE, "--reason", "checked by hand")
    assert out.returncode == 0, out.stderr
    assert g.heartbeat()["trust"] == "trusted"
    time.sleep(3)
    assert g.orders() == []
    assert not [r for r in g.ledger() if r["kind"] == "order"
                and r["body"]["kind"] == "fetch-secrets"]
    # the role given to the trusted node: its next heartbeat brings the order
    assert g.server.ctl("node", "secrets-role", NODE, "web").returncode == 0
    g.heartbeat()
    assert len(_wait(g.orders)) == 1  # type: ignore[arg-type]


def test_quarantine_revokes_without_the_agent(gate_db: Gate) -> None:
    g = gate_db
    _trust(g)
    got = _fetch(g)
    conn = pg_connect(g.w.pg.server.port, got.username, got.password)
    assert conn.execute("SELECT 1").fetchone() == (1,)
    assert _token_alive(g.w, got.report.accessor)
    # the agent is gone (kill -9): nobody will acknowledge the quarantine
    out = g.server.ctl("order", "create", NODE, "quarantine", "--arg", "level=hard")
    assert out.returncode == 0, out.stderr
    waited = g.server.ctl("node", "secrets", NODE, "--wait-revoked", "60")
    assert waited.returncode == 0, waited.stderr + waited.stdout
    grant = json.loads(waited.stdout)["grants"][0]
    assert grant["revoked_at"] and grant["last_outcome"] == "revoked"
    assert "quarantine order" in grant["revoke_reason"]
    assert not _token_alive(g.w, got.report.accessor)
    assert not pg_role_exists(g.w.pg.server.port, got.username)
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    conn.close()
    steps = g.secret_events("revocation_step")
    assert [(s["step"], s["outcome"]) for s in steps] == [
        ("check_owner", "ok"), ("revoke_accessor", "ok"), ("revoke_lease", "ok"),
        ("verify_token", "ok"), ("verify_login", "ok")]
    assert steps[2]["target"] == got.report.leases[0]
    for s in steps:
        assert 0 < s["started_ms"] <= s["ended_ms"]
    assert g.secret_events("revoked")[0]["accessor"] == got.report.accessor
    # trusted still (the quarantine is not acknowledged), but no new secrets
    assert g.heartbeat()["trust"] == "trusted"
    time.sleep(2)
    g.heartbeat()
    time.sleep(1)
    listed = [json.loads(x) for x in g.server.ctl("orders", "--node", NODE).stdout.splitlines()]
    assert [o["kind"] for o in listed].count("fetch-secrets") == 1
    assert g.secret_events("wrap_unused") == []  # not even asked Vault for one
    # the agent comes back and reports the quarantine failed (e.g. no segmentation; or a
    # compromised node lies): the node stays trusted, and still gets no secrets
    with g.node.client(g.server) as c:
        quarantine = next(o for o in c.get(routes.ORDERS).json()
                          if o["order"]["kind"] == "quarantine")
    assert g.ack(quarantine, "failed", "segmentation is off")["status"] == "failed"
    assert g.heartbeat()["trust"] == "trusted"
    time.sleep(fetch_backoff(1) + 1)
    g.heartbeat()
    time.sleep(1)
    listed = [json.loads(x) for x in g.server.ctl("orders", "--node", NODE).stdout.splitlines()]
    assert [o["kind"] for o in listed].count("fetch-secrets") == 1
    _no_secret_leaked(g, got.token, got.wrapping_token, got.password, got.secret_id)


def test_a_machine_enrolled_after_the_quarantine_gets_secrets_again(gate: Gate) -> None:
    """A quarantine order binds the machine it was made for: the fresh machine that enrolls
    after it (a rebuild; here an operator's re-enrollment with new keys) is judged on its
    own attestation, while the quarantined one got nothing more."""
    g = gate
    _trust(g)
    first = _fetch(g)
    out = g.server.ctl("order", "create", NODE, "quarantine", "--arg", "level=hard")
    assert out.returncode == 0, out.stderr
    assert g.server.ctl("node", "secrets", NODE, "--wait-revoked", "60").returncode == 0
    with g.node.client(g.server) as c:
        quarantine = next(o for o in c.get(routes.ORDERS).json()
                          if o["order"]["kind"] == "quarantine")
    assert g.ack(quarantine, "done", "segment quarantined")["status"] == "done"
    time.sleep(1.1)  # enrollment times are whole seconds: the new one comes after
    out = g.server.ctl("node", "reenroll", NODE, "--reason", "replaced by a fresh machine")
    assert out.returncode == 0, out.stderr
    g.node = new_node(g.server, NODE)
    assert enroll(g.server, g.node, g.server.token(NODE)).status_code == 200
    assert g.attest()["state"] == "trusted"
    again = _fetch(g)
    assert again.report.accessor != first.report.accessor
    assert _token_alive(g.w, again.report.accessor)
    assert not _token_alive(g.w, first.report.accessor)


def test_vault_unreachable_revocation_is_retried_until_done_across_a_restart(gate: Gate) -> None:
    g = gate
    _trust(g)
    got = _fetch(g)
    g.relay.cut()
    # an attestation mismatch makes it suspect: it leaves trusted
    (g.root / "etc/aegis.conf").write_text("tampered\n")
    assert g.attest()["state"] == "suspect"
    failed = _wait(lambda: g.secret_events("revocation_failed"), timeout=30)
    assert "cannot reach the vault" in failed[0]["reason"]  # type: ignore[index]
    assert g.status()["grants"][0]["last_outcome"].startswith("failed: check_owner")
    assert _token_alive(g.w, got.report.accessor)  # nothing revoked yet
    assert "revoking a node's secrets failed" in (g.server.state / "serve.log").read_text()
    # the controller dies meanwhile: the revocation asked for is in its database
    g.server.kill()
    g.relay.restore()
    g.server.start(*g.serve_args)
    waited = g.server.ctl("node", "secrets", NODE, "--wait-revoked", "60")
    assert waited.returncode == 0, waited.stderr + waited.stdout
    assert not _token_alive(g.w, got.report.accessor)
    assert not pg_role_exists(g.w.pg.server.port, got.username)
    assert g.secret_events("revoked")[0]["attempts"] >= 2


def test_vault_unreachable_at_issue_is_recorded_and_retried_at_next_heartbeat(
        gate: Gate) -> None:
    g = gate
    g.relay.cut()
    _trust(g)
    failed = _wait(lambda: g.secret_events("wrap_failed"))
    assert "cannot reach the vault" in failed[0]["reason"]  # type: ignore[index]
    assert g.orders() == []
    assert "no secrets for a trusted node" in (g.server.state / "serve.log").read_text()
    g.relay.restore()
    g.heartbeat()
    _fetch(g)


def test_vault_refusal_at_issue_is_recorded(gate: Gate) -> None:
    g = gate
    _trust(g, role="ghost")  # no such node role: the controller's policy has no path for it
    failed = _wait(lambda: g.secret_events("wrap_failed"))
    reason = failed[0]["reason"]  # type: ignore[index]
    assert "refused to make a wrapped secret_id at auth/" in reason and "(403)" in reason
    assert "is 'ghost' a node role of the aegis.fleet.vault role" in reason  # what to fix
    assert g.server.proc is not None and g.server.proc.poll() is None  # no crash
    assert g.orders() == []


def test_refresh_before_expiry_revokes_the_old_token(gate: Gate) -> None:
    g = gate
    _trust(g)
    first = _fetch(g, expires_in=6)
    g.heartbeat()
    time.sleep(1)
    assert g.orders() == []  # not yet at 2/3 of its lifetime
    time.sleep(4)
    g.heartbeat()
    second = _fetch(g)
    assert second.report.accessor != first.report.accessor
    waited = g.server.ctl("node", "secrets", NODE, "--wait-revoked", "60")
    assert waited.returncode == 0, waited.stderr
    grants = json.loads(waited.stdout)["grants"]
    assert [bool(x["revoked_at"]) for x in grants] == [True, False]
    assert grants[0]["revoke_reason"].startswith("replaced by the secrets of order")
    assert not _token_alive(g.w, first.report.accessor)
    assert _token_alive(g.w, second.report.accessor)
    assert not pg_role_exists(g.w.pg.server.port, first.username)
    assert pg_role_exists(g.w.pg.server.port, second.username)


def test_secrets_acknowledged_after_leaving_trusted_are_revoked(gate: Gate) -> None:
    g = gate
    _trust(g)
    order = _wait(g.orders)[0]  # type: ignore[index]
    got = _play_agent(g, order)
    (g.root / "etc/aegis.conf").write_text("tampered\n")
    assert g.attest()["state"] == "suspect"
    assert g.orders() == []  # a suspect node is served no fetch-secrets order
    g.ack(order, "done", got.report.model_dump_json())
    waited = g.server.ctl("node", "secrets", NODE, "--wait-revoked", "60")
    assert waited.returncode == 0, waited.stderr
    grant = json.loads(waited.stdout)["grants"][0]
    assert grant["revoke_reason"] == "fetched while the node is suspect"
    assert not _token_alive(g.w, got.report.accessor)
    assert not pg_role_exists(g.w.pg.server.port, got.username)


def test_unfetched_order_expires_scrubbed_and_is_replaced(gate_short_wrap: Gate) -> None:
    g = gate_short_wrap
    _trust(g)
    order = _wait(g.orders)[0]  # type: ignore[index]
    wrapping = order["order"]["args"]["wrapped_secret_id"]
    assert order["order"]["expires_at"] - order["order"]["issued_at"] == 4  # the wrap TTL

    def scrubbed() -> bool:
        with g.server.engine().connect() as conn:
            signed, detail = conn.exec_driver_sql(
                "SELECT signed, detail FROM orders WHERE kind = 'fetch-secrets'").one()
        return wrapping not in signed and detail.startswith("expired unacknowledged")

    _wait(scrubbed, timeout=20)
    with pytest.raises(hvac_errors.VaultError):  # and Vault let it expire too
        hvac.Client(url=g.w.bao.addr, token=wrapping).sys.unwrap()
    g.heartbeat()  # still trusted, still without secrets: a new order
    fresh = _wait(g.orders)[0]  # type: ignore[index]
    assert fresh["order"]["id"] != order["order"]["id"]


def test_a_false_report_cannot_revoke_another_nodes_token(gate: Gate) -> None:
    g = gate
    _trust(g)
    order = _wait(g.orders)[0]  # type: ignore[index]
    got = _play_agent(g, order)
    # a token of another node (its secret_id made for it, as the gate makes them)
    w = g.w
    path = secret_id_path(w.approle_mount, w.approle("web"))
    other_id = w.root.adapter.post(f"/v1/{path}", json={
        "metadata": json.dumps({"aegis_node": "web2"})})["data"]["secret_id"]
    other = hvac.Client(url=w.bao.addr).auth.approle.login(
        w.role_ids["web"], other_id, mount_point=w.approle_mount)["auth"]
    false = got.report.model_copy(update={"accessor": other["accessor"]})
    g.ack(order, "done", false.model_dump_json())
    assert g.server.ctl("order", "create", NODE, "quarantine").returncode == 0
    waited = g.server.ctl("node", "secrets", NODE, "--wait-revoked", "60")
    assert waited.returncode == 0, waited.stderr
    grant = json.loads(waited.stdout)["grants"][0]
    assert grant["last_outcome"].startswith("refused: the token of this accessor was issued "
                                            "for node 'web2'")
    assert _token_alive(w, other["accessor"])  # web2 keeps its token
    assert g.secret_events("revocation_refused")
    with contextlib.suppress(hvac_errors.VaultError):
        w.root.adapter.post("/v1/auth/token/revoke-accessor",
                            json={"accessor": other["accessor"]})
        w.root.adapter.post("/v1/auth/token/revoke-accessor",
                            json={"accessor": got.report.accessor})


def test_unwrap_failure_event_raises_a_critical_incident(gate: Gate) -> None:
    g = gate
    events = [Event(ts_ns=time.time_ns(), kind="agent", severity=sev, data={"what": what})
              for what, sev in (("secrets_fetched", "info"),
                                (SECRETS_UNWRAP_FAILED, "critical"))]
    with g.node.client(g.server) as c:
        r = c.post(routes.EVENTS, json=EventBatch(node_id=NODE, events=events).model_dump(
            mode="json"))
    assert r.status_code == 200, r.text
    incidents = [json.loads(x) for x in g.server.ctl("incidents", "--node", NODE)
                 .stdout.splitlines()]
    assert [(i["rule"], i["severity"]) for i in incidents] == [
        ("secrets-unwrap-failed", "critical")]


def test_bad_report_is_refused_with_a_reason(gate: Gate) -> None:
    g = gate
    _trust(g)
    order = _wait(g.orders)[0]  # type: ignore[index]
    g.ack(order, "done", json.dumps({"role": g.w.approle("web"), "accessor": "x",
                                     "token_ttl": 5, "expires_at": 1,
                                     "leases": ["aegis-db/creds/web/"]}))
    refused = g.secret_events("report_refused")
    assert "lease id 'aegis-db/creds/web/'" in refused[0]["reason"]
    row = next(o for o in json.loads("[" + ",".join(
        g.server.ctl("orders", "--node", NODE).stdout.splitlines()) + "]")
        if o["kind"] == "fetch-secrets")
    assert row["status"] == "failed" and "controller: lease id" in row["detail"]
    assert g.status()["grants"] == []
    # a node whose fetch failed is not handed a new secret_id at once (found on a real
    # node: a failing agent got a new one every heartbeat) but after the back-off
    g.heartbeat()
    time.sleep(1)
    assert g.orders() == []
    time.sleep(fetch_backoff(1))
    g.heartbeat()
    # not JSON at all
    order = _wait(g.orders)[0]  # type: ignore[index]
    g.ack(order, "done", "fetched " + secrets.token_hex(4))
    assert "not a SecretsReport" in g.secret_events("report_refused")[-1]["reason"]
