"""The just-in-time access lab, shared by tests/integration/test_access_datapath.py and
``python -m benchmarks.access``: the real agent daemon (real XDP filter on namespace b's
veth) enrolled and trusted at a real controller in namespace a, which trusts the real
OpenBao's identity tokens (OpenBao listens on the host's loopback; a relay opened inside
namespace a at the same address and port lets the controller fetch the issuer's keys, so
the issuer URL is the one in the tokens). Users ``dana`` (group dev, allowed ``db``
tcp/5432) and ``eve`` (sales) call from namespace a.

    with access_fleet(openbao, prefix, interval=0.3) as fleet:
        fleet.as_user("dana", "POST", routes.ACCESS, {...})
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
import sqlalchemy as sa
from harness_idp import Idp, make_idp
from test_agent_controller import _connect
from test_agent_daemon import Daemon
from test_agent_orders_path import _module_daemon

from harness import OpenBao, netns_pair, wait_until
from harness_controller import Server, controller_server

PORT = 5432
#: a second service of the node (``cache``), so one test can hold two grants side by side
CACHE_PORT = 6379


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
            outside.settimeout(None)  # for connecting only: idle connections stay open
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


@contextlib.contextmanager
def access_fleet(openbao: OpenBao, prefix: str, interval: float = 0.3) -> Iterator[Fleet]:
    """The lab above under ``prefix`` (``interval``: the agent's rounds), torn down after."""
    idp = make_idp(openbao, prefix, {"dana": ["dev"], "eve": ["sales"]})
    bao = urlsplit(openbao.addr)
    with netns_pair(prefix) as pair, _module_daemon(pair) as d, \
            controller_server(d.prefix + "c", None, host=pair.a_addr, netns=pair.a) as srv:
        relay = NetnsRelay(d.lab.in_a, bao.hostname or "127.0.0.1", bao.port or 80)
        try:
            srv.kill()  # again, as the issuer's relying party
            srv.start("--oidc-issuer", idp.issuer, "--oidc-audience", idp.audience)
            node_id, _token = _connect(d, srv, interval=interval)
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
                f"services: {{db: {{nodes: {{role: db}}, port: tcp/{PORT}}}, "
                f"cache: {{nodes: {{role: db}}, port: tcp/{CACHE_PORT}}}}}\n"
                "rules: [{name: developers-db, service: db, roles: [developer], "
                "max_ttl: 1h}, {name: developers-cache, service: cache, "
                "roles: [developer], max_ttl: 1h}]\n")
            out = srv.ctl("access", "policy", "set", str(policy))
            assert out.returncode == 0, out.stderr
            d.lab.listen("b", pair.b_addr, PORT)
            d.lab.listen("b", pair.b_addr, CACHE_PORT)
            yield Fleet(d, srv, idp, node_id)
        finally:
            relay.close()


def _state(srv: Server, node_id: str) -> str | None:
    out = srv.ctl("node", "show", node_id)
    return json.loads(out.stdout).get("state") if out.returncode == 0 else None
