"""The controller as agents meet it, for tests: a real `aegis-controller serve` process
(uvicorn, mutual TLS with the controller's own CA) on a free loopback port, on SQLite or on
the run's PostgreSQL, and nodes with their own keys that enroll against it."""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aegis_agent.measure import collect, signed_report
from aegis_controller.pki import new_key
from aegis_protocol import routes
from aegis_protocol.attestation import ExpectedProfile
from aegis_protocol.enrollment import node_csr
from aegis_protocol.events import Event, EventBatch
from aegis_protocol.files import key_pem
from aegis_protocol.signing import public_key_text
from harness import free_port

BIN = Path(sys.executable).parent


def make_csr(key: ec.EllipticCurvePrivateKey, node_id: str) -> bytes:
    """A node's CSR as the protocol defines it, in PEM."""
    return node_csr(key, node_id).encode()


@dataclass
class Server:
    state: Path
    db: str | None
    port: int = 0
    proc: subprocess.Popen | None = None
    host: str = "127.0.0.1"
    netns: str | None = None  # serve inside this network namespace

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def ca(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.state / "ca" / "ca.pem")

    def ctl(self, *args: str, env: dict[str, str] | None = None,
            in_netns: bool = False) -> subprocess.CompletedProcess:
        """Run ``aegis-controller`` on this server's state (``env`` added to the
        environment; ``in_netns``: inside the server's network namespace)."""
        cmd = [str(BIN / "aegis-controller"), "--state-dir", str(self.state)]
        cmd += ["--db", self.db] if self.db else []
        if in_netns and self.netns:
            cmd = ["nsenter", f"--net=/run/netns/{self.netns}", *cmd]
        return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120,
                              check=False, env={**os.environ, **(env or {})})

    def start(self, *extra: str) -> None:
        self.port = self.port or free_port()
        cmd = [str(BIN / "aegis-controller"), "--state-dir", str(self.state)]
        cmd += ["--db", self.db] if self.db else []
        log = (self.state / "serve.log").open("a")
        cmd = [*cmd, "serve", "--host", self.host, "--port", str(self.port), *extra]
        if self.netns:
            cmd = ["nsenter", f"--net=/run/netns/{self.netns}", *cmd]
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.state / "serve.log").read_text()
            if self.healthy():
                return
            time.sleep(0.1)
        log = (self.state / "serve.log").read_text()
        raise AssertionError(f"controller did not come up: {log}")

    def healthy(self) -> bool:
        try:
            if self.netns:  # probe from inside the namespace
                probe = ("import httpx, ssl, sys; ctx = ssl.create_default_context(cafile="
                         f"{str(self.state / 'ca' / 'ca.pem')!r}); sys.exit(httpx.get("
                         f"{self.url + '/healthz'!r}, verify=ctx, timeout=1).status_code != 200)")
                return subprocess.run(["nsenter", f"--net=/run/netns/{self.netns}",
                                       sys.executable, "-c", probe], capture_output=True,
                                      timeout=10, check=False).returncode == 0
            return httpx.get(f"{self.url}/healthz", verify=self.ca, timeout=1).status_code == 200
        except (httpx.HTTPError, OSError, ssl.SSLError, subprocess.SubprocessError):
            return False

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


@contextlib.contextmanager
def controller_server(prefix: str, pg_url: str | None, *, host: str = "127.0.0.1",
                      netns: str | None = None) -> Iterator[Server]:
    """A controller on SQLite (``pg_url`` None) or on a fresh PostgreSQL database."""
    state = Path(tempfile.mkdtemp(prefix=f"{prefix}-ctl-"))
    srv = Server(state, pg_url, host=host, netns=netns)
    try:
        assert srv.ctl("keys", "init").returncode == 0
        srv.start()
        yield srv
    finally:
        if srv.proc is not None:
            srv.kill()
        shutil.rmtree(state, ignore_errors=True)


def new_node(server: Server, node_id: str) -> Node:
    key = new_key()
    path = server.state / f"{node_id}.key"
    path.write_bytes(key_pem(key))
    os.chmod(path, 0o600)
    node = Node(node_id, path)
    node.csr = make_csr(key, node_id).decode()  # type: ignore[attr-defined]
    node.identity = Ed25519PrivateKey.generate()  # type: ignore[attr-defined]
    return node


def report_incidents_twice(server: Server, node_id: str) -> Node:
    """``node_id`` enrolls and sends, twice, an event batch that raises two incidents: an
    exec the kernel denied (``denied-exec``, high) and its agent's policy quarantining
    the node (``agent-quarantined-node``, critical, with a quarantine order); the second
    copy is stored as duplicates. Returns the node."""
    node = new_node(server, node_id)
    assert enroll(server, node, server.token(node_id)).status_code == 200
    denied = Event(ts_ns=1, kind="exec_denied", severity="warning",
                   data={"filename": "/usr/bin/nc", "pid": 4242, "uid": 0})
    quarantined = Event(ts_ns=2, kind="policy", severity="critical",
                        data={"rule": "scan", "action": "quarantine", "result": "ok"})
    batch = EventBatch(node_id=node_id, events=[denied, quarantined]).model_dump(mode="json")
    with node.client(server) as c:
        assert c.post("/v1/events", json=batch).json() == {"stored": 2, "duplicates": 0}
        assert c.post("/v1/events", json=batch).json() == {"stored": 0, "duplicates": 2}
    return node


def node_tree(root: Path) -> Path:
    """A node's file tree as the agent measures it (``collect(root=...)``): one golden file,
    the golden record and a boot id; a profile of its golden files makes it trusted."""
    (root / "etc").mkdir(parents=True)
    (root / "etc/aegis.conf").write_text("ok\n")
    (root / "var/lib/aegis").mkdir(parents=True)
    (root / "var/lib/aegis/golden.json").write_text(json.dumps(
        {"schema": "aegis.golden/v1", "files": {"/etc/aegis.conf": "x"}}))
    (root / "proc/sys/kernel/random").mkdir(parents=True)
    (root / "proc/sys/kernel/random/boot_id").write_text("boot-1\n")
    return root


def attest(server: Server, node: Node, root: Path) -> dict:
    """One attestation of ``node`` as its agent makes it (challenge, a signed report of
    the tree at ``root``); the controller's verdict."""
    with node.client(server) as c:
        nonce = c.get(routes.ATTEST_CHALLENGE).json()["nonce"]
        report = signed_report(node.identity, node.node_id, nonce,  # type: ignore[attr-defined]
                               collect(root=root, sshd=False))
        r = c.post(routes.ATTEST, json=report.model_dump(mode="json"))
    assert r.status_code == 200, r.text
    return r.json()


def trusted_node(server: Server, node_id: str, root: Path) -> Node:
    """``node_id`` enrolled with a fresh token, its expected profile the golden files of
    ``node_tree(root)``, and attested trusted against it (its tree stays at ``root``: a
    change there makes its next :func:`attest` suspect)."""
    node = new_node(server, node_id)
    assert enroll(server, node, server.token(node_id)).status_code == 200
    expected = ExpectedProfile(golden=collect(root=node_tree(root), sshd=False).golden)
    with operator_client(server) as op:
        r = op.put(routes.node_profile(node_id), json=expected.model_dump(mode="json"))
    assert r.status_code == 204, r.text
    assert attest(server, node, root)["state"] == "trusted"
    return node


def enroll(server: Server, node: Node, token: str) -> httpx.Response:
    with node.client(server) as c:
        r = c.post(routes.ENROLL, json={
            "node_id": node.node_id, "token": token, "csr_pem": node.csr,  # type: ignore[attr-defined]
            "identity_key": public_key_text(node.identity.public_key())})  # type: ignore[attr-defined]
    if r.status_code == 200:
        node.cert_file = server.state / f"{node.node_id}.pem"
        node.cert_file.write_text(r.json()["certificate_pem"])
        node.order_key = r.json()["order_key"]  # type: ignore[attr-defined]
    return r


def operator_client(server: Server, name: str = "alice") -> httpx.Client:
    """An HTTPS client with an operator certificate from `aegis-controller operator-cert`."""
    out = server.ctl("operator-cert", name, "--out", str(server.state / "ops"))
    assert out.returncode == 0, out.stderr
    ctx = server.ca
    ctx.load_cert_chain(server.state / f"ops/operator-{name}.pem",
                        server.state / f"ops/operator-{name}.key")
    return httpx.Client(base_url=server.url, verify=ctx, timeout=30)


# -- raw TLS, for clients that do what no HTTP library does (half requests, huge uploads)
def raw_tls(server: Server, node: Node | None = None, source: str | None = None
         ) -> ssl.SSLSocket:
    ctx = server.ca
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2  # no session tickets: readable = answered
    if node is not None and node.cert_file is not None:
        ctx.load_cert_chain(node.cert_file, node.key_file)
    raw = socket.create_connection((server.host, server.port), timeout=20,
                                   source_address=(source, 0) if source else None)
    return ctx.wrap_socket(raw, server_hostname=server.host)


def read_answer(sock: ssl.SSLSocket) -> tuple[int, bytes]:
    """The status and body of the answer, read until the server closes (it does after a
    refusal)."""
    data = b""
    while True:
        try:
            part = sock.recv(65536)
        except (ConnectionResetError, ssl.SSLError):
            break
        if not part:
            break
        data += part
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def upload(sock: ssl.SSLSocket, head: bytes, chunk: bytes, most: int) -> int:
    """Send ``head`` then ``chunk`` repeatedly, up to ``most`` bytes, until the server
    answers or stops reading; return how many body bytes went out."""
    sock.sendall(head)
    sent = 0
    while sent < most:
        if select.select([sock], [], [], 0)[0] or sock.pending():
            break
        try:
            sock.sendall(chunk)
        except OSError:  # the server answered and closed: what we want
            break
        sent += len(chunk)
    return sent


def closed(sock: ssl.SSLSocket) -> bool:
    try:
        return sock.recv(1024) == b""
    except OSError:  # reset, or TLS cut short: closed too
        return True
