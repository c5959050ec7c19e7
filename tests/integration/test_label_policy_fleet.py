"""Label policies end to end with real traffic: a real controller in namespace a, the real
agent daemon of node db (real XDP filter on namespace b's veth) enrolled and trusted, and
two web nodes enrolled and attested at the controller (real enrollment and attestation
from namespace a, where their addresses live: web1 at a's address, its replacement web2
at a second address). The policy ``web -> db tcp/5432`` reaches the agent as signed
``segment-policy`` orders; TCP connections from a's addresses to b show what the filter
does: allowed port passes, others dropped; web1 suspect: dropped; web2 (new address)
allowed once trusted; observe mode passes and counts would-be drops; enforce drops them."""

from __future__ import annotations

import json
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
import test_fqdn_egress as fqdn
import yaml
from test_agent_controller import _connect
from test_agent_daemon import Daemon, _pinned_link_ids
from test_agent_orders_path import _module_daemon

from conftest import sub_prefix
from harness import netns_pair, wait_until
from harness_controller import Node, Server, attest, controller_server, enroll, new_node, node_tree

pytestmark = pytest.mark.integration

PORT, OTHER_PORT = 5432, 5433
WEB2_ADDR = "192.0.2.3"
POLICY = """policies:
  - name: web-db
    from: {role: web}
    to: {role: db}
    ports: [tcp/5432]
    action: allow
    mode: enforce
"""


@dataclass
class Fleet:
    daemon: Daemon
    server: Server
    db: str
    root: Path

    def ctl(self, *args: str) -> str:
        out = self.server.ctl(*args)
        assert out.returncode == 0, out.stderr
        return out.stdout

    def state(self, node_id: str) -> str:
        return json.loads(self.ctl("node", "show", node_id))["state"]

    def in_a(self, fn, *args):  # type: ignore[no-untyped-def]
        return self.daemon.lab.in_a.submit(fn, *args).result()

    def web(self, name: str, address: str) -> Node:
        """A web node enrolled from namespace a, labelled, trusted by attestation."""
        node = new_node(self.server, f"{self.daemon.prefix}-{name}")
        r = self.in_a(enroll, self.server, node, self.server.token(node.node_id))
        assert r.status_code == 200, r.text
        self.ctl("node", "labels", node.node_id, "role=web", "--address", address)
        self.set_profile(node, {})
        assert self.attest(node)["state"] == "trusted"
        return node

    def set_profile(self, node: Node, profile: dict) -> None:
        path = self.root / f"{node.node_id}.profile.json"
        path.write_text(json.dumps(profile))
        self.ctl("profile", "set", node.node_id, str(path))

    def attest(self, node: Node) -> dict:
        tree = self.root / f"{node.node_id}-tree"
        if not tree.exists():
            node_tree(tree)
        return self.in_a(attest, self.server, node, tree)

    def last_push_done(self) -> bool:
        """The db node's latest segment-policy order was executed by its agent."""
        with self.server.engine().connect() as conn:
            status = conn.execute(sa.text(
                "SELECT o.status FROM segment_pushes p JOIN orders o ON o.order_id = "
                "p.order_id WHERE p.node_id = :n"), {"n": self.db}).scalar()
        return status == "done"

    def connects(self, source: str, port: int) -> bool:
        """A TCP connection (and an echo) from ``source`` in namespace a to db."""
        def run() -> bool:
            with socket.socket() as s:
                s.bind((source, 0))
                s.settimeout(0.6)
                try:
                    s.connect((self.daemon.lab.pair.b_addr, port))
                    s.sendall(b"ping")
                    return s.recv(4) == b"ping"
                except (TimeoutError, ConnectionRefusedError):
                    return False
        return self.in_a(run)

    def reported(self) -> list[dict]:
        """The label_policy_counters events the controller got from db's agent."""
        out = self.ctl("events", "--node", self.db, "--kind", "agent", "--limit", "1000")
        return [e["data"] for e in map(json.loads, out.splitlines())
                if e["data"].get("what") == "label_policy_counters"]

    def policies(self) -> dict:
        _rc, status, _err = self.daemon.cli("status")
        return status["segment"]["label_policies"]  # type: ignore[index]


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    with netns_pair(sub_prefix()) as pair, _module_daemon(pair) as d, \
            controller_server(d.prefix + "c", None, host=pair.a_addr, netns=pair.a) as srv, \
            tempfile.TemporaryDirectory(prefix=f"{d.prefix}-nodes-") as root:
        pair.run(pair.a, "ip", "addr", "add", f"{WEB2_ADDR}/24", "dev", pair.a_if)
        cfg = yaml.safe_load(d.config.read_text())
        cfg["segment"]["policy_report_interval"] = 0.5
        d.config.write_text(yaml.safe_dump(cfg))
        node_id, _token = _connect(d, srv, interval=0.3)
        f = Fleet(d, srv, node_id, Path(root))
        assert wait_until(lambda: f.state(node_id) == "enrolled", 60), d.log[-1].read_text()
        f.set_profile(Node(node_id, Path()), {})
        assert wait_until(lambda: f.state(node_id) == "trusted", 60), f.state(node_id)
        f.ctl("node", "labels", node_id, "role=db", "--address", pair.b_addr)
        for port in (PORT, OTHER_PORT):
            d.lab.listen("b", pair.b_addr, port)
        yield f


def test_label_policy_follows_trust_and_replacement(fleet: Fleet) -> None:
    web1 = fleet.web("web1", fleet.daemon.lab.pair.a_addr)
    a = fleet.daemon.lab.pair.a_addr
    assert not fleet.connects(a, PORT)  # no policy yet: the filter's default drop
    out = json.loads(fleet.ctl("segment", "policy", "set", str(_write(fleet, POLICY))))
    assert out["version"] == 1 and len(out["pushed"]) == 1
    assert wait_until(fleet.last_push_done, 30)
    assert fleet.connects(a, PORT)
    assert not fleet.connects(a, OTHER_PORT)  # web -> db: only tcp/5432
    assert not fleet.connects(WEB2_ADDR, PORT)  # not a trusted web node (yet)
    counters = fleet.policies()["web-db"]
    assert counters["mode"] == "enforce"
    assert counters["allowed_packets"] > 0 and counters["dropped_packets"] > 0
    edge = {e["edge"]: e for e in counters["edges"]}[f"allow {a} -> "
                                                     f"{fleet.daemon.lab.pair.b_addr} tcp/5432"]
    assert edge["allowed_packets"] > 0 and edge["allowed_bytes"] > 0

    # web1 turns suspect (its measurement no longer matches): dropped
    fleet.set_profile(web1, {"golden": {"/etc/aegis.conf": "0" * 64}})
    assert fleet.attest(web1)["state"] == "suspect"
    assert wait_until(fleet.last_push_done, 30)
    assert wait_until(lambda: not fleet.connects(a, PORT), 10)
    assert fleet.policies() == {}

    # its replacement at a new address: allowed once trusted
    fleet.web("web2", WEB2_ADDR)
    assert wait_until(fleet.last_push_done, 30)
    assert wait_until(lambda: fleet.connects(WEB2_ADDR, PORT), 10)
    assert not fleet.connects(a, PORT)  # the suspect one stays out
    assert not fleet.connects(WEB2_ADDR, OTHER_PORT)

    # observe: the would-be drop passes and is counted; enforce: dropped
    before = fleet.policies()["web-db"]
    links = _pinned_link_ids(Path(fleet.daemon.lab.pin))
    assert len(links) == 2  # XDP and tcx
    fleet.ctl("segment", "policy", "mode", "web-db", "observe")
    assert wait_until(fleet.last_push_done, 30)
    assert wait_until(lambda: fleet.connects(WEB2_ADDR, OTHER_PORT), 10)
    observed = fleet.policies()["web-db"]
    assert observed["mode"] == "observe"
    assert observed["observed_packets"] > before["observed_packets"]
    assert observed["dropped_packets"] == before["dropped_packets"]
    fleet.ctl("segment", "policy", "mode", "web-db", "enforce")
    assert wait_until(fleet.last_push_done, 30)
    assert wait_until(lambda: not fleet.connects(WEB2_ADDR, OTHER_PORT), 10)
    assert fleet.connects(WEB2_ADDR, PORT)
    enforced = fleet.policies()["web-db"]
    assert enforced["mode"] == "enforce"
    assert _pinned_link_ids(Path(fleet.daemon.lab.pin)) == links  # nothing re-attached
    assert enforced["dropped_packets"] > observed["dropped_packets"]
    # the counters reach the controller as the agent's label_policy_counters events
    assert wait_until(lambda: any(
        e["policy"] == "web-db" and e["mode"] == "enforce"
        and e["dropped_packets"] >= enforced["dropped_packets"]
        and e["observed_packets"] == enforced["observed_packets"] > 0
        for e in fleet.reported()), 30), fleet.reported()[-3:]
    # and each would-be drop of observe mode was a flow event naming the policy
    drops = [json.loads(line)["data"] for line in fleet.ctl(
        "events", "--node", fleet.db, "--kind", "drop", "--limit", "1000").splitlines()]
    verdicts = {(d["verdict"], d["observed"], d.get("policy")) for d in drops
                if d["dport"] == OTHER_PORT}
    assert {("drop_policy", True, "web-db"), ("drop_policy", False, "web-db")} <= verdicts
    assert fleet.server.ctl("ledger", "verify").returncode == 0


def test_a_bad_policy_file_is_refused_naming_the_field_and_changes_nothing(
        fleet: Fleet) -> None:
    before = fleet.server.ctl("segment", "policy", "show")
    bad = _write(fleet, POLICY.replace("tcp/5432", "tcp/99999"))
    out = fleet.server.ctl("segment", "policy", "set", str(bad))
    assert out.returncode != 0
    assert "policies[0].ports[0]: 'tcp/99999' is not tcp/PORT" in out.stderr
    out = fleet.server.ctl("segment", "policy", "set", str(_write(
        fleet, POLICY.replace("role: web", "rack: r1"))))
    assert out.returncode != 0 and "policies[0].from.rack: unknown label key" in out.stderr
    assert fleet.server.ctl("segment", "policy", "show").stdout == before.stdout


def test_a_to_fqdns_policy_reaches_the_node_and_restricts_its_egress(fleet: Fleet) -> None:
    """Egress by domain through the real controller: ``segment policy set`` with a
    to_fqdns entry for the db node, a signed order, the agent's filter; the node keeps
    reaching its controller (the management path) while everything else it opens is
    restricted to what the test DNS server answered for the allowed name."""
    pair = fleet.daemon.lab.pair
    for addr in (fqdn.API, fqdn.OTHER, fqdn.DNS_SERVER):
        pair.run(pair.a, "ip", "addr", "add", f"{addr}/24", "dev", pair.a_if)
    for addr in (fqdn.API, fqdn.OTHER):
        fleet.daemon.lab.listen("a", addr, fqdn.PORT)
    d = fleet.daemon
    assert fqdn.reachable(d, fqdn.API) and fqdn.reachable(d, fqdn.OTHER)
    text = POLICY + (f"  - {{name: db-out, from: {{role: db}}, to_fqdns: [api.example.test], "
                     f"ports: [tcp/{fqdn.PORT}], resolvers: [{fqdn.DNS_SERVER}]}}\n")
    fleet.ctl("segment", "policy", "set", str(_write(fleet, text)))
    assert wait_until(fleet.last_push_done, 30)  # the order came over the management path
    shown = json.loads(fleet.ctl("segment", "policy", "show"))["policies"]
    assert shown[1]["to_fqdns"] == ["api.example.test"]
    assert not fqdn.reachable(d, fqdn.API) and not fqdn.reachable(d, fqdn.OTHER)
    with fqdn.dns_server(d):
        assert fqdn.resolve(d, "api.example.test") == [fqdn.API]
        assert wait_until(lambda: fqdn.learned(d) == 1, 10, 0.05)
    assert fqdn.reachable(d, fqdn.API) and not fqdn.reachable(d, fqdn.OTHER)
    # the controller still reaches the node and the node the controller: a new order runs
    fleet.ctl("segment", "policy", "mode", "db-out", "observe")
    assert wait_until(fleet.last_push_done, 30)
    assert fqdn.reachable(d, fqdn.OTHER)  # observe: passed, reported
    def egress_drops() -> set[tuple[str, bool]]:  # (destination, observed) at the controller
        return {(x["dst"], x["observed"]) for x in (json.loads(line)["data"] for line in fleet.ctl(
            "events", "--node", fleet.db, "--kind", "drop", "--limit", "1000").splitlines())
            if x["verdict"] == "drop_egress"}

    assert wait_until(lambda: {(fqdn.OTHER, True), (fqdn.OTHER, False),
                               (fqdn.API, False)} <= egress_drops(), 30), egress_drops()


def _write(fleet: Fleet, text: str) -> Path:
    path = fleet.root / f"policy-{abs(hash(text))}.yml"
    path.write_text(text)
    return path
