"""Just-in-time access through the real data path: the real agent daemon (real XDP filter
on namespace b's veth) enrolled and trusted at a real controller in namespace a, which
trusts the real OpenBao's identity tokens (OpenBao listens on the host's loopback; a relay
opened inside namespace a at the same address and port lets the controller fetch the
issuer's keys, so the issuer URL is the one in the tokens). The user is in namespace a:
without a request a TCP connection to the node's service is dropped; the user's request
is granted, the agent runs the signed grant order and the connection succeeds; a revoke
cuts it again."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
import pytest
import sqlalchemy as sa
from harness_idp import Idp, make_idp
from test_agent_controller import _connect
from test_agent_daemon import Daemon
from test_agent_orders_path import _module_daemon

from aegis_protocol import routes
from conftest import sub_prefix
from harness import OpenBao, netns_pair, wait_until
from harness_controller import Server, controller_server

pytestmark = pytest.mark.integration

PORT = 5432


class NetnsRelay:
    """TCP from ``addr:port`` inside a namespace (the listening socket made there) to the
    same address and port on the host (connections made from a host thread)."""

    def __init__(self, in_ns: ThreadPoolExecutor, addr: str, port: int) -> None:
        self.target = (addr, port)
        self.listener = in_ns.submit(socket.create_server, (addr, port)).result()
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                inside, _ = self.listener.accept()
            except OSError:
                return
            try:
                outside = socket.create_connection(self.target, timeout=5)
            except OSError:
                inside.close()
                continue
            self._conns += [inside, outside]
            for a, b in ((inside, outside), (outside, inside)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.listener.close()
        for s in self._conns:
            with contextlib.suppress(OSError):
                s.close()


@dataclass
class Fleet:
    daemon: Daemon
    server: Server
    idp: Idp
    node_id: str

    def as_user(self, user: str, method: str, path: str, body: dict | None = None
                ) -> httpx.Response:
        """An access call from namespace a (the user's machine) with ``user``'s token."""
        token = self.idp.token(user)

        def call() -> httpx.Response:
            with httpx.Client(base_url=self.server.url, verify=self.server.ca,
                              timeout=30) as c:
                return c.request(method, path, json=body,
                                 headers={"Authorization": f"Bearer {token}"})
        return self.daemon.lab.in_a.submit(call).result()

    def order_status(self, order_id: str) -> str:
        with self.server.engine().connect() as conn:
            return conn.execute(sa.text("SELECT status FROM orders WHERE order_id = :o"),
                                {"o": order_id}).scalar_one()


@pytest.fixture(scope="module")
def fleet(openbao: OpenBao) -> Iterator[Fleet]:
    idp = make_idp(openbao, sub_prefix(), {"dana": ["dev"], "eve": ["sales"]})
    bao = urlsplit(openbao.addr)
    with netns_pair(sub_prefix()) as pair, _module_daemon(pair) as d, \
            controller_server(d.prefix + "c", None, host=pair.a_addr, netns=pair.a) as srv:
        relay = NetnsRelay(d.lab.in_a, bao.hostname or "127.0.0.1", bao.port or 80)
        try:
            srv.kill()  # again, as the issuer's relying party
            srv.start("--oidc-issuer", idp.issuer, "--oidc-audience", idp.audience)
            node_id, _token = _connect(d, srv, interval=0.3)
            assert wait_until(lambda: _state(srv, node_id) == "enrolled", 60), \
                d.log[-1].read_text()
            profile = d.root / "profile.json"
            profile.write_text("{}")
            out = srv.ctl("profile", "set", node_id, str(profile))
            assert out.returncode == 0, out.stderr
            assert wait_until(lambda: _state(srv, node_id) == "trusted", 60), \
                _state(srv, node_id)
            out = srv.ctl("node", "labels", node_id, "role=db", "--address", pair.b_addr)
            assert out.returncode == 0, out.stderr
            policy = d.root / "access.yml"
            policy.write_text(
                f"roles: {{developer: [{idp.group('dev')}]}}\n"
                f"services: {{db: {{nodes: {{role: db}}, port: tcp/{PORT}}}}}\n"
                "rules: [{name: developers-db, service: db, roles: [developer], "
                "max_ttl: 1h}]\n")
            out = srv.ctl("access", "policy", "set", str(policy))
            assert out.returncode == 0, out.stderr
            d.lab.listen("b", pair.b_addr, PORT)
            yield Fleet(d, srv, idp, node_id)
        finally:
            relay.close()


def _state(srv: Server, node_id: str) -> str | None:
    out = srv.ctl("node", "show", node_id)
    return json.loads(out.stdout).get("state") if out.returncode == 0 else None


def test_granted_user_connects_through_the_filter_and_revoke_cuts_it(fleet: Fleet) -> None:
    lab = fleet.daemon.lab
    assert not lab.reachable(PORT)  # no request: dropped by the filter
    r = fleet.as_user("eve", "POST", routes.ACCESS,
                      {"service": "db", "ttl": "10m", "reason": "curious"})
    assert r.status_code == 403 and "no rule of the access policy" in r.json()["detail"]
    assert not lab.reachable(PORT)
    r = fleet.as_user("dana", "POST", routes.ACCESS,
                      {"service": "db", "ttl": "10m", "reason": "INC-42"})
    assert r.status_code == 201, r.text
    granted = r.json()
    (edge,) = granted["edges"]
    assert edge["edge"] == f"{lab.pair.a_addr} -> {lab.pair.b_addr} tcp/{PORT}"
    assert wait_until(lambda: fleet.order_status(edge["grant_order"]) == "done", 30)
    assert wait_until(lambda: lab.reachable(PORT), 10)
    r = fleet.as_user("dana", "POST", routes.access_one(granted["request_id"], "revoke"),
                      {"reason": "done"})
    assert r.status_code == 200 and r.json()["status"] == "revoked", r.text
    revoke = r.json()["edges"][0]["revoke_order"]
    assert wait_until(lambda: fleet.order_status(revoke) == "done", 30)
    assert wait_until(lambda: not lab.reachable(PORT), 10)
    assert fleet.server.ctl("ledger", "verify").returncode == 0



def test_trickle_keeps_the_grant_and_silence_revokes_it_after_idle(fleet: Fleet) -> None:
    """One packet every 5 s for longer than the 60 s idle timeout keeps the edge; then,
    with no traffic (nothing probes the edge meanwhile: the test watches the controller),
    the agent drops it, the controller records the idle revoke, and a new connection
    fails."""
    lab = fleet.daemon.lab
    r = fleet.as_user("dana", "POST", routes.ACCESS,
                      {"service": "db", "ttl": "30m", "reason": "INC-43"})
    assert r.status_code == 201, r.text
    rid = r.json()["request_id"]
    assert wait_until(lambda: lab.reachable(PORT), 30)
    conn = lab.connect(PORT, timeout=5)
    assert conn is not None
    with conn:
        for _ in range(16):  # 16 x 5 s = 80 s > 60 s idle
            conn.sendall(b"tick")
            assert conn.recv(4) == b"tick"
            time.sleep(5)
    state = fleet.as_user("dana", "GET", routes.access_one(rid)).json()
    assert state["status"] == "granted" and state["edges"][0]["status"] == "active", state
    assert lab.reachable(PORT)  # still open: a new connection passes
    assert wait_until(lambda: fleet.as_user("dana", "GET", routes.access_one(rid)).json()
                      ["status"] == "revoked", 120, 2)
    state = fleet.as_user("dana", "GET", routes.access_one(rid)).json()
    assert state["end_reason"].startswith("idle: no traffic for 60 s"), state
    assert state["edges"][0]["status"] == "idle"
    assert not lab.reachable(PORT)
    ledger = fleet.server.ctl("ledger", "show")
    events = [json.loads(line)["body"] for line in ledger.stdout.splitlines()
              if json.loads(line)["subject"] == f"access:{rid}"]
    assert [e["event"] for e in events] == ["request", "grant", "idle_revoke"]
    assert events[-1]["user"]["name"] == f"{fleet.idp.tag}-dana"
    assert fleet.server.ctl("ledger", "verify").returncode == 0
