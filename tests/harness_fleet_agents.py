"""Agents on real lab fleet nodes, trusted and labelled, for the access and label-policy
acceptance on the fleet (``tests/e2e/test_access_fleet.py``) and the policy roll-out
figure of ``python -m benchmarks.access --fleet N``.

A local fleet at the ``agent`` level (containers with systemd, reached over SSH); a real
controller on the host at the fleet bridge's gateway address (where the nodes reach it),
trusting the real OpenBao's identity tokens when an identity provider is given; the
golden records from ``aegis.fleet.harden`` (tag ``golden``); ``aegis.fleet.agent`` on
every node in one play (one-time tokens from the controller through
``agent_bootstrap_token_command``, segmentation filter on ``eth0``); each node's expected
profile set from its golden record with its BPF programs pinned, so it attests
*trusted*; labels and address set with ``node labels``.

A *user host* is the user's machine on the fleet bridge: a network namespace named with
the fleet's prefix, joined to the bridge by a veth whose host end is enslaved to it, with
an address of the fleet's /24 that no node gets (:data:`USER_HOST`).

    with agent_fleet(prefix, {"web": {"role": "web"}, "db": {"role": "db"}}) as lab:
        lab.listen("db", 5432)
        with user_host(lab, "u") as user:
            user.connect(lab.address("db"), 5432)
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import shlex
import socket
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import sqlalchemy as sa
import yaml
from harness_idp import Idp
from pyroute2 import IPRoute, NetNS, netns

from aegis_lab.fleet import LocalFleet
from aegis_lab.naming import FIRST_HOST, MAX_NODES
from aegis_lab.network import bridge_name
from aegis_lab.playbook import ansible_playbook
from aegis_lab.podman import podman
from aegis_lab.wheels import build_agent_wheels
from harness import PATHS, enter_netns, local_fleet, wait_until
from harness_controller import BIN, Server, controller_server

AGENT = "/opt/aegis/agent/bin/aegis-agent"
#: host numbers in the fleet's /24 for user hosts: above every node slot
#: (nodes are .10 to .41), below the broadcast address
USER_HOST = 200
assert USER_HOST > FIRST_HOST + MAX_NODES

T = TypeVar("T")

_CONNECT = """
import socket, sys
s = socket.socket()
s.settimeout(float(sys.argv[3]))
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    print("open")
except ConnectionRefusedError:
    print("refused")
except (TimeoutError, OSError) as e:
    print("timeout" if isinstance(e, TimeoutError) else f"error {e}")
"""


@dataclass
class AgentFleet:
    fleet: LocalFleet
    server: Server
    idp: Idp | None
    labels: dict[str, dict[str, str]]
    info: dict = field(default_factory=dict)

    @property
    def gateway(self) -> str:
        return str(self.info["gateway"])

    @property
    def nodes(self) -> list[str]:
        return sorted(self.info["nodes"])

    def address(self, node: str) -> str:
        return str(self.info["nodes"][node]["address"])

    def ctl(self, *args: str) -> str:
        out = self.server.ctl(*args)
        assert out.returncode == 0, f"aegis-controller {' '.join(args)}: {out.stderr}"
        return out.stdout

    def node(self, name: str) -> dict:
        out = self.server.ctl("node", "show", name)
        return json.loads(out.stdout) if out.returncode == 0 and out.stdout else {}

    def exec(self, node: str, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return podman("exec", f"{self.fleet.prefix}-{node}", *cmd, check=False,
                      timeout=timeout)

    def agent_status(self, node: str) -> dict:
        out = self.exec(node, AGENT, "status")
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def journal(self, node: str, unit: str = "aegis-agent") -> str:
        return self.exec(node, "journalctl", "-u", unit, "--no-pager", "-n", "60").stdout

    def listen(self, node: str, port: int) -> None:
        """A TCP service on ``node``, every address, ``port`` (a systemd unit)."""
        out = self.exec(node, "systemd-run", f"--unit=aegis-listen-{port}", "python3", "-m",
                        "http.server", str(port), "--directory", "/run")
        assert out.returncode == 0, out.stderr
        assert wait_until(lambda: self.connect_from(node, "127.0.0.1", port) == "open", 30)

    def connect_from(self, node: str, address: str, port: int, timeout: float = 2) -> str:
        """A TCP connection from inside ``node``: ``open``, ``refused`` or ``timeout``."""
        out = self.exec(node, "python3", "-c", _CONNECT, address, str(port), str(timeout))
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    def push_order(self, node: str) -> str | None:
        """The latest ``segment-policy`` order sent to ``node``."""
        with self.server.engine().connect() as conn:
            return conn.execute(sa.text("SELECT order_id FROM segment_pushes WHERE "
                                        "node_id = :n"), {"n": node}).scalar()

    def push_status(self, node: str) -> str | None:
        """The state of the latest ``segment-policy`` order sent to ``node``."""
        order = self.push_order(node)
        return self.order_status(order) if order else None

    def order_status(self, order_id: str) -> str | None:
        with self.server.engine().connect() as conn:
            return conn.execute(sa.text("SELECT status FROM orders WHERE order_id = :o"),
                                {"o": order_id}).scalar()


def _agent_play(lab: AgentFleet) -> Path:
    gw = lab.gateway
    token_command = [str(BIN / "aegis-controller"), "--state-dir", str(lab.server.state),
                     "token", "issue", "--no-wrap"]
    play = [{
        "name": "Install the agent", "hosts": "aegis_fleet", "gather_facts": False,
        "roles": [{"role": "aegis.fleet.agent", "vars": {
            "agent_controller_url": lab.server.url,
            "agent_controller_ca": (lab.server.state / "ca" / "ca.pem").read_text(),
            "agent_bootstrap_token_command": shlex.join(token_command),
            "agent_interval": 1,
            "agent_attest_interval": 3600,
            "agent_segment_interface": "eth0",
            "agent_edges": [f"{gw} -> any tcp/22"],
        }}],
    }]
    path = lab.server.state / "agent.yml"
    path.write_text(yaml.safe_dump(play))
    return path


@contextlib.contextmanager
def agent_fleet(prefix: str, labels: dict[str, dict[str, str]], idp: Idp | None = None,
                say: Callable[[str], None] = lambda _m: None) -> Iterator[AgentFleet]:
    """Nodes named as ``labels``' keys, each trusted and labelled; the fleet and
    controller are removed on exit, even on failure."""
    build_agent_wheels(PATHS)
    with local_fleet(prefix, len(labels), caps="agent", names=sorted(labels)) as fleet:
        info = fleet.info()
        names = sorted(info["nodes"])
        assert names == sorted(labels), f"nodes {names}, labels for {sorted(labels)}"
        with controller_server(prefix, None, host=info["gateway"]) as server:
            if idp is not None:
                server.kill()  # again, as the issuer's relying party
                server.start("--oidc-issuer", idp.issuer, "--oidc-audience", idp.audience)
            lab = AgentFleet(fleet, server, idp, labels, info)
            say(f"fleet {info['network']} up; golden records (aegis.fleet.harden)")
            golden = ansible_playbook(fleet, PATHS.playbooks / "harden.yml", tags="golden")
            assert golden.ok, golden.tail(40)
            say("aegis.fleet.agent on every node")
            play = ansible_playbook(fleet, _agent_play(lab))
            assert play.ok, play.tail(40)
            for name in names:
                assert wait_until(lambda n=name: lab.node(n).get("measurement"), 90), \
                    lab.journal(name)
                record = server.state / f"golden-{name}.json"
                record.write_text(lab.exec(name, "cat", "/var/lib/aegis/golden.json").stdout)
                lab.ctl("profile", "set", name, str(record), "--pin-bpf")
            assert wait_until(lambda: all(lab.node(n).get("state") == "trusted"
                                          for n in names), 120), \
                {n: lab.node(n).get("state") for n in names}
            for name in names:
                lab.ctl("node", "labels", name,
                        *(f"{k}={v}" for k, v in labels[name].items()),
                        "--address", lab.address(name))
            say("agents enrolled, trusted, labelled")
            yield lab


@dataclass
class UserHost:
    """The user's machine: a namespace on the fleet bridge (``run`` executes there)."""

    ns: str
    address: str
    pool: ThreadPoolExecutor

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        return self.pool.submit(fn, *args).result()

    def connect(self, address: str, port: int, timeout: float = 2) -> str:
        """A TCP connection from the user's address: ``open``, ``refused`` or ``timeout``."""
        def attempt() -> str:
            try:
                with socket.create_connection((address, port), timeout=timeout):
                    return "open"
            except ConnectionRefusedError:
                return "refused"
            except TimeoutError:
                return "timeout"
        return self.run(attempt)

    def request(self, server: Server, method: str, path: str, token: str,
                body: dict | None = None) -> httpx.Response:
        """An HTTPS call to the controller from the user's address with ``token``."""
        def call() -> httpx.Response:
            with httpx.Client(base_url=server.url, verify=server.ca, timeout=30) as c:
                return c.request(method, path, json=body,
                                 headers={"Authorization": f"Bearer {token}"})
        return self.run(call)


@contextlib.contextmanager
def user_host(lab: AgentFleet, tag: str = "u", host: int = USER_HOST) -> Iterator[UserHost]:
    """Namespace ``<prefix>-user<tag>`` on the fleet bridge at ``.host`` of its /24, with the
    host end of its veth (``<prefix>u<tag>``) enslaved to the bridge; both removed on exit,
    even on failure."""
    prefix = lab.fleet.prefix
    ns, host_end = f"{prefix}-user{tag}", f"{prefix}u{tag}"
    net = ipaddress.IPv4Network(lab.info["network"])
    address = str(net.network_address + host)
    pool = ThreadPoolExecutor(1, initializer=enter_netns, initargs=(ns,))
    try:
        netns.create(ns)
        with IPRoute() as ipr:
            ipr.link("add", ifname=host_end, kind="veth", peer={"ifname": "eth0",
                                                                "net_ns_fd": ns})
            bridge = ipr.link_lookup(ifname=bridge_name(prefix))[0]
            ipr.link("set", index=ipr.link_lookup(ifname=host_end)[0], master=bridge,
                     state="up")
        with NetNS(ns) as inside:
            for name, addr in (("lo", None), ("eth0", address)):
                index = inside.link_lookup(ifname=name)[0]
                if addr:
                    inside.addr("add", index=index, address=addr, prefixlen=net.prefixlen)
                inside.link("set", index=index, state="up")
        yield UserHost(ns, address, pool)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        with contextlib.suppress(OSError):
            netns.remove(ns)  # takes its end of the veth, and so the host end, with it
        with IPRoute() as ipr, contextlib.suppress(Exception):
            for index in ipr.link_lookup(ifname=host_end):
                ipr.link("del", index=index)
