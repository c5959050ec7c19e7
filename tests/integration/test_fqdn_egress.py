"""Egress by domain with the agent daemon as it runs on a node (issue 15 part 5): the
daemon in namespace b with the segment filter on its veth, a real DNS server (a small
one built on dnspython: dnsmasq is not installed here) and TCP listeners in namespace a,
the node resolving through that server with dnspython's resolver code (never the host's
resolv.conf), and a restart of the daemon between two connections.

The FQDN policy reaches the daemon as the controller's ``segment-policy`` order would,
through the control socket (the controller's compile: tests/unit/test_label_policy.py).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import dns.message
import dns.query
import dns.rcode
import dns.rrset
import pytest
from test_agent_daemon import Daemon, daemon_lab

from aegis_agent.control import ControlError, call
from harness import NetnsPair, wait_until

pytestmark = pytest.mark.integration

API, OTHER, DNS_SERVER = "192.0.2.10", "192.0.2.11", "192.0.2.53"
PORT = 8443
ZONE = {"api.example.test.": API, "other.example.test.": OTHER}


@pytest.fixture
def daemon(netns: NetnsPair) -> Iterator[Daemon]:
    for addr in (API, OTHER, DNS_SERVER):
        netns.run(netns.a, "ip", "addr", "add", f"{addr}/24", "dev", netns.a_if)
    yield from daemon_lab(netns)


@contextlib.contextmanager
def dns_server(d: Daemon, ttl: int = 5) -> Iterator[list[str]]:
    """A UDP DNS server on DNS_SERVER:53 in namespace a answering A queries from ZONE
    (NXDOMAIN otherwise); yields the names it was asked."""
    sock = d.lab.in_a.submit(socket.socket, socket.AF_INET, socket.SOCK_DGRAM).result()
    sock.bind((DNS_SERVER, 53))
    asked: list[str] = []

    def serve() -> None:
        while True:
            try:
                wire, peer = sock.recvfrom(4096)
            except OSError:
                return
            q = dns.message.from_wire(wire)
            r = dns.message.make_response(q)
            name = q.question[0].name.to_text().lower()
            asked.append(name)
            if name in ZONE:
                r.answer.append(dns.rrset.from_text(name, ttl, "IN", "A", ZONE[name]))
            else:
                r.set_rcode(dns.rcode.NXDOMAIN)
            sock.sendto(r.to_wire(), peer)

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield asked
    finally:
        sock.close()


def resolve(d: Daemon, name: str) -> list[str]:
    """The node (namespace b) asks the test server: dnspython's query code, its socket
    made in b."""
    def ask() -> dns.message.Message:
        return dns.query.udp(dns.message.make_query(name, "A"), DNS_SERVER, timeout=2)

    answer = d.lab.in_b.submit(ask).result()
    return [rd.address for rrset in answer.answer for rd in rrset]


def reachable(d: Daemon, addr: str, timeout: float = 0.6) -> bool:
    """A TCP connection from the node (namespace b) to ``addr``:PORT echoes."""
    s = d.lab.in_b.submit(socket.socket).result()
    s.settimeout(timeout)
    try:
        with s:
            s.connect((addr, PORT))
            s.sendall(b"ping")
            return s.recv(4) == b"ping"
    except OSError:
        return False


def push(d: Daemon, mode: str = "enforce") -> dict:
    return call(d.root / "run" / "agent.sock", "segment-policy", policies=[f"out={mode}"],
                entries=[], fqdns=["out api.example.test tcp/8443"],
                resolvers=[f"out {DNS_SERVER}"])


def learned(d: Daemon) -> int:
    return d.cli("status")[1]["segment"]["fqdn"]["learned"]  # type: ignore[index]


def test_a_resolved_name_is_reachable_an_unresolved_address_is_not_and_a_restart_keeps_it(
        daemon: Daemon) -> None:
    d = daemon
    d.start()
    for addr in (API, OTHER):
        d.lab.listen("a", addr, PORT)
    assert reachable(d, API) and reachable(d, OTHER)  # no FQDN policy yet: egress is free
    assert push(d)["fqdn_rules"] == 1
    assert not reachable(d, API)  # allowed name, but never answered yet
    with dns_server(d) as asked:
        assert resolve(d, "api.example.test") == [API]
        assert wait_until(lambda: learned(d) == 1, 10, 0.05)
        assert reachable(d, API)
        assert not reachable(d, OTHER)  # never answered for an allowed name
        assert resolve(d, "other.example.test") == [OTHER]  # answered, name not allowed
        assert not reachable(d, OTHER)
        assert asked == ["api.example.test.", "other.example.test."]
    status = d.cli("status")[1]
    assert status["dns_learning"] == {"learned": 1, "not_allowed": 1}  # type: ignore[index]
    assert status["segment"]["fqdn"]["egress_mode"] == "enforce"  # type: ignore[index]
    # the agent stops: the kernel keeps enforcing what was learned
    assert d.stop() == 0
    assert reachable(d, API) and not reachable(d, OTHER)
    # a new agent reopens the pinned maps: no new DNS query (the server is gone)
    d.start()
    assert learned(d) == 1
    assert reachable(d, API) and not reachable(d, OTHER)
    rows = {(e["kind"], e["address"], e["port"], e["pattern"])
            for e in d.lab.agent("fqdn")["entries"]}
    assert rows == {("learned", API, f"tcp/{PORT}", "api.example.test"),
                    ("resolver", DNS_SERVER, "tcp/53", None),
                    ("resolver", DNS_SERVER, "udp/53", None)}
    drops = [e["data"] for e in d.events() if e["kind"] == "drop"
             and e["data"]["verdict"] == "drop_egress"]
    assert drops and {x["dst"] for x in drops} == {API, OTHER}
    assert not any(x["observed"] for x in drops)


def test_an_answer_that_came_while_no_agent_ran_is_learned_at_its_start(daemon: Daemon) -> None:
    d = daemon
    d.start()
    d.lab.listen("a", API, PORT)
    push(d)
    assert d.stop() == 0
    with dns_server(d) as asked:
        assert resolve(d, "api.example.test") == [API]  # copied to the pinned ring
        assert not reachable(d, API)  # no agent to learn from it yet
        d.start()
        assert wait_until(lambda: learned(d) == 1, 10, 0.05)
        assert reachable(d, API)
        assert asked == ["api.example.test."]  # no second query


def test_observe_mode_lets_the_unresolved_through_and_reports_it(daemon: Daemon) -> None:
    d = daemon
    d.start()
    d.lab.listen("a", OTHER, PORT)
    push(d, "observe")
    assert reachable(d, OTHER)
    assert wait_until(lambda: any(
        e["kind"] == "drop" and e["data"]["verdict"] == "drop_egress"
        and e["data"]["observed"] and e["data"]["dst"] == OTHER for e in d.events()), 10)
    push(d, "enforce")
    assert not reachable(d, OTHER)


def test_a_bad_policy_is_refused_and_changes_nothing(daemon: Daemon) -> None:
    d = daemon
    d.start()
    push(d)
    before = d.cli("status")[1]["segment"]["fqdn"]  # type: ignore[index]
    sock = d.root / "run" / "agent.sock"
    with pytest.raises(ControlError, match=r"'\*' may only"):
        call(sock, "segment-policy", policies=["out=enforce"], entries=[],
             fqdns=["out a*.example.test tcp/8443"], resolvers=[f"out {DNS_SERVER}"])
    with pytest.raises(ControlError, match="has no mode"):
        call(sock, "segment-policy", policies=["out=enforce"], entries=[],
             fqdns=["other api.example.test any"], resolvers=[f"out {DNS_SERVER}"])
    assert d.cli("status")[1]["segment"]["fqdn"] == before  # type: ignore[index]
