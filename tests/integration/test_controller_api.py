"""The controller's API as agents meet it: a real `aegis-controller serve` process (uvicorn,
mutual TLS with the controller's own CA) on a free loopback port, real client
certificates from enrollment, SQLite and PostgreSQL behind it, kill -9 in the middle of
an event burst."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from aegis_controller.pki import key_pem, make_csr, new_key
from aegis_protocol.events import Event, EventBatch
from conftest import sub_prefix
from harness import free_port

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent


@dataclass
class Server:
    state: Path
    db: str | None
    port: int = 0
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.state / "ca" / "ca.pem")

    def ctl(self, *args: str) -> subprocess.CompletedProcess:
        cmd = [str(BIN / "aegis-controller"), "--state-dir", str(self.state)]
        cmd += ["--db", self.db] if self.db else []
        return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120,
                              check=False)

    def start(self) -> None:
        self.port = self.port or free_port()
        cmd = [str(BIN / "aegis-controller"), "--state-dir", str(self.state)]
        cmd += ["--db", self.db] if self.db else []
        log = (self.state / "serve.log").open("a")
        self.proc = subprocess.Popen([*cmd, "serve", "--port", str(self.port)], stdout=log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.state / "serve.log").read_text()
            try:
                if httpx.get(f"{self.url}/healthz", verify=self.ca, timeout=1).status_code == 200:
                    return
            except (httpx.HTTPError, OSError):
                pass
            time.sleep(0.1)
        log = (self.state / "serve.log").read_text()
        raise AssertionError(f"controller did not come up: {log}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(timeout=30)
        self.proc = None

    def token(self, node: str, ttl: int = 600) -> str:
        out = self.ctl("token", "issue", node, "--ttl", str(ttl))
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    def engine(self) -> sa.Engine:
        return sa.create_engine(self.db or f"sqlite:///{self.state / 'controller.db'}")


@dataclass
class Node:
    node_id: str
    key_file: Path
    cert_file: Path | None = None

    def client(self, server: Server) -> httpx.Client:
        ctx = server.ca
        if self.cert_file:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        return httpx.Client(base_url=server.url, verify=ctx, timeout=30)


@pytest.fixture(params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    db = None
    if request.param == "postgresql":
        url = request.getfixturevalue("pg_url")
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.execute(sa.text("DROP TABLE IF EXISTS events, nodes, bootstrap_tokens, "
                                 "ledger_records, alembic_version"))
        engine.dispose()
        db = url
    state = Path(tempfile.mkdtemp(prefix=f"{sub_prefix()}-ctl-"))
    srv = Server(state, db)
    assert srv.ctl("keys", "init").returncode == 0
    try:
        srv.start()
        yield srv
    finally:
        if srv.proc is not None:
            srv.kill()
        subprocess.run(["rm", "-rf", str(state)], check=False)


def _new_node(server: Server, node_id: str) -> Node:
    key = new_key()
    path = server.state / f"{node_id}.key"
    path.write_bytes(key_pem(key))
    os.chmod(path, 0o600)
    node = Node(node_id, path)
    node.csr = make_csr(key, node_id).decode()  # type: ignore[attr-defined]
    return node


def _enroll(server: Server, node: Node, token: str) -> httpx.Response:
    with node.client(server) as c:
        r = c.post("/v1/enroll", json={"node_id": node.node_id, "token": token,
                                       "csr_pem": node.csr})  # type: ignore[attr-defined]
    if r.status_code == 200:
        node.cert_file = server.state / f"{node.node_id}.pem"
        node.cert_file.write_text(r.json()["certificate_pem"])
    return r


def _ledger_kinds(server: Server) -> list[tuple[str, str]]:
    out = server.ctl("ledger", "show")
    import json

    return [(r["kind"], r["subject"]) for r in map(json.loads, out.stdout.splitlines())]


def test_enrollment_and_the_identity_it_gives(server: Server) -> None:
    node = _new_node(server, "web1")
    r = _enroll(server, node, server.token("web1"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["node_id"] == "web1" and body["not_after"] > time.time() + 3600
    with node.client(server) as c:
        me = c.get("/v1/nodes/self")
    assert me.status_code == 200 and me.json()["state"] == "enrolled"
    with httpx.Client(base_url=server.url, verify=server.ca) as anonymous:
        assert anonymous.get("/v1/nodes/self").status_code == 401
    assert ("enrollment", "web1") in _ledger_kinds(server)
    assert server.ctl("ledger", "verify").returncode == 0


def test_bad_tokens_are_refused_and_recorded(server: Server) -> None:
    a, b = _new_node(server, "a1"), _new_node(server, "b1")
    token = server.token("a1")
    assert _enroll(server, a, token).status_code == 200
    reused = _enroll(server, _new_node(server, "a1"), token)
    assert reused.status_code == 403 and "already used" in reused.json()["detail"]
    other = _enroll(server, b, server.token("a1"))
    assert other.status_code == 403 and "another node" in other.json()["detail"]
    assert _enroll(server, b, "x" * 43).json()["detail"].startswith("enrollment refused: unknown")
    expiring = server.token("b1", ttl=10)
    with server.engine().begin() as conn:
        conn.execute(sa.text("UPDATE bootstrap_tokens SET expires_at = 0 WHERE used_at IS NULL"))
    expired = _enroll(server, b, expiring)
    assert expired.status_code == 403 and "expired" in expired.json()["detail"]
    refusals = [s for k, s in _ledger_kinds(server) if k == "token_refused"]
    assert refusals == ["a1", "b1", "b1", "b1"]


def test_malformed_requests_get_4xx_that_say_what_is_wrong(server: Server) -> None:
    with httpx.Client(base_url=server.url, verify=server.ca) as c:
        r = c.post("/v1/enroll", json={"node_id": "Bad Name!", "token": "t"})
        assert r.status_code == 422
        assert "node_id" in r.json()["detail"] and "csr_pem" in r.json()["detail"]
        r = c.post("/v1/enroll", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 422
    node = _new_node(server, "c1")
    node.csr = make_csr(new_key(), "someone-else").decode()  # type: ignore[attr-defined]
    r = _enroll(server, node, server.token("c1"))
    assert r.status_code == 400 and "CN must be the node id" in r.json()["detail"]


def _batches(node_id: str, total: int, size: int) -> list[dict]:
    events = [Event(ts_ns=i, kind="exec", data={"i": i}) for i in range(total)]
    return [EventBatch(node_id=node_id, events=events[i:i + size]).model_dump(mode="json")
            for i in range(0, total, size)]


def test_ten_thousand_events_stored_exactly_once_across_a_kill_9(server: Server) -> None:
    node = _new_node(server, "n1")
    assert _enroll(server, node, server.token("n1")).status_code == 200
    batches = _batches("n1", 10_000, 250)
    acked: set[int] = set()
    killed = threading.Event()

    def send_all() -> None:
        """The agent's forwarder: send each batch until it is acknowledged."""
        for i, batch in enumerate(batches):
            while i not in acked:
                try:
                    with node.client(server) as c:
                        r = c.post("/v1/events", json=batch)
                    if r.status_code == 200:
                        acked.add(i)
                except (httpx.HTTPError, OSError):
                    time.sleep(0.2)  # the controller is down: back off and resend

    sender = threading.Thread(target=send_all)
    sender.start()
    while len(acked) < 10:
        time.sleep(0.01)
    server.kill(signal.SIGKILL)  # mid-burst
    killed.set()
    time.sleep(0.5)
    server.start()
    sender.join(timeout=600)
    assert len(acked) == len(batches)
    with node.client(server) as c:  # a resent batch is counted as duplicates
        again = c.post("/v1/events", json=batches[0]).json()
    assert again == {"stored": 0, "duplicates": 250}
    with server.engine().connect() as conn:
        count = conn.execute(sa.text("SELECT count(*), count(DISTINCT event_id) FROM events")
                             ).one()
    assert tuple(count) == (10_000, 10_000)


def test_a_node_cannot_post_for_another(server: Server) -> None:
    a = _new_node(server, "a2")
    assert _enroll(server, a, server.token("a2")).status_code == 200
    with a.client(server) as c:
        r = c.post("/v1/events", json=_batches("b2", 3, 3)[0])
    assert r.status_code == 403 and "client certificate is 'a2'" in r.json()["detail"]
    with httpx.Client(base_url=server.url, verify=server.ca) as c:
        assert c.post("/v1/events", json=_batches("a2", 1, 1)[0]).status_code == 401
