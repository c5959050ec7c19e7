"""Egress by domain in the real segment programs (BPF_PROG_TEST_RUN on crafted packets):
the egress restriction an FQDN policy puts on a node (resolvers and learned addresses
pass, everything else is dropped, or passed and reported in observe mode), replies and
flows the node already has untouched, and the DNS answers the ingress program copies to
user space, parsed by the agent's learner (dnspython) into learned addresses.
The daemon with real traffic, a real DNS server and a restart: test_fqdn_egress.py."""

from __future__ import annotations

import time

import dns.message
import dns.rrset
import pytest
from test_segment_filter import drained, ipv4, nonzero, passes, seg, syn, tcp, udp  # noqa: F401

from aegis_agent.bpf import layout
from aegis_agent.bpf.fqdn import FqdnError
from aegis_agent.bpf.segment import SegmentFilter
from aegis_agent.dns_learning import DnsAnswer, DnsLearner, addresses

pytestmark = pytest.mark.integration

NODE, RESOLVER, API, OTHER = "192.0.2.2", "192.0.2.53", "192.0.2.10", "192.0.2.11"
ACK = 0x10


def _install(filt: SegmentFilter, mode: str = "enforce",
             rules: tuple[str, ...] = ("out api.example.test tcp/443",)) -> dict:
    modes = {"out": mode}
    filt.label_policies.apply(modes, [])
    return filt.fqdn.apply(filt.fqdn.policy_indexes(), modes, list(rules), [f"out {RESOLVER}"])


def out_syn(dst: str, dport: int = 443, sport: int = 40000) -> bytes:
    return syn(NODE, dport, sport, dst=dst)


def query(name: str, qid: int = 7) -> bytes:
    q = dns.message.make_query(name, "A")
    q.id = qid
    return q.to_wire()


def answer(name: str, addrs: list[str], ttl: int = 30, qid: int = 7,
           cname: str | None = None) -> bytes:
    q = dns.message.make_query(name, "A")
    q.id = qid
    r = dns.message.make_response(q)
    owner = name + "."
    if cname:
        r.answer.append(dns.rrset.from_text(owner, ttl, "IN", "CNAME", cname + "."))
        owner = cname + "."
    if addrs:
        r.answer.append(dns.rrset.from_text(owner, ttl, "IN", "A", *addrs))
    return r.to_wire()


def resolve(filt: SegmentFilter, learner: DnsLearner, name: str, addrs: list[str],
            **kw) -> list:
    """The node's query out (egress), the resolver's answer in (ingress), and the records
    the ingress program copied, each handed to the learner."""
    assert passes(filt, ipv4(NODE, RESOLVER, 17, udp(5353, 53, query(name))), "egress")
    assert passes(filt, ipv4(RESOLVER, NODE, 17, udp(53, 5353, answer(name, addrs, **kw))))
    got: list[DnsAnswer] = []
    filt.reader(got.append, layout.MAP_SEG_DNS, DnsAnswer.unpack).drain()
    for a in got:
        learner.handle(a)
    return got


def test_restricted_node_reaches_resolvers_and_learned_addresses_only(seg):  # noqa: F811
    assert passes(seg, out_syn(OTHER, sport=39999), "egress")  # no FQDN policy: egress free
    assert _install(seg) == {"fqdn_rules": 1, "resolvers": 1, "learned_removed": 0}
    assert not passes(seg, out_syn(API), "egress")  # not learned yet
    assert passes(seg, ipv4(NODE, RESOLVER, 17, udp(5353, 53, query("x.test"))), "egress")
    learner = DnsLearner(seg, floor=60)
    (rec,) = resolve(seg, learner, "api.example.test", [API])
    assert (str(rec.server), str(rec.client), rec.truncated) == (RESOLVER, NODE, False)
    assert learner.counts == {"learned": 1}
    assert passes(seg, out_syn(API), "egress")
    assert not passes(seg, out_syn(API, dport=80), "egress")  # the rule's port only
    assert not passes(seg, out_syn(OTHER), "egress")  # never answered
    counters = nonzero(seg, "egress")
    assert counters["drop_egress"] == 3 and counters["pass_egress"] == 4
    assert {(e.verdict, e.direction, e.observed, str(e.dst)) for e in drained(seg)} == {
        ("drop_egress", "egress", False, API), ("drop_egress", "egress", False, OTHER)}
    (row,) = [e for e in seg.fqdn.entries() if e.kind == "learned"]
    assert (str(row.address), row.proto, row.port, row.policy, row.pattern) == (
        API, "tcp", 443, "out", "api.example.test")
    # the TTL (30 s) is under the floor: the floor counts
    assert 55e9 < row.expires_ns - time.monotonic_ns() <= 60e9
    assert seg.fqdn.status()["learned"] == 1


def test_replies_and_flows_the_node_has_keep_working(seg):  # noqa: F811
    assert passes(seg, out_syn(OTHER, 8080), "egress")  # opened before the policy
    seg.grant(f"{OTHER} -> {NODE} tcp/22")
    _install(seg)
    assert passes(seg, ipv4(NODE, OTHER, 6, tcp(40000, 8080, ACK)), "egress")
    # an inbound flow an edge admitted: the node's replies are no new flow
    assert passes(seg, syn(OTHER, 22, 41000, dst=NODE))
    assert passes(seg, ipv4(NODE, OTHER, 6, tcp(22, 41000, 0x12)), "egress")
    assert not passes(seg, out_syn(OTHER, 8081), "egress")


def test_a_reverted_segment_policy_keeps_the_controllers_egress_restriction(seg):  # noqa: F811
    """Timed confirmation's revert (``restore``) puts back the agent's own policy; the
    controller's FQDN restriction is not part of it and stays, like its label policies."""
    snap = seg.snapshot()
    _install(seg)
    seg.restore(snap)
    assert seg.fqdn.status()["egress_restricted"] is True
    assert not passes(seg, out_syn(OTHER), "egress")


def test_observe_mode_passes_and_reports_would_be_drops(seg):  # noqa: F811
    _install(seg, "observe")
    assert seg.fqdn.status()["egress_mode"] == "observe"
    assert passes(seg, out_syn(OTHER), "egress")
    assert nonzero(seg, "egress") == {"would_drop_egress": 1}
    assert [(e.verdict, e.observed) for e in drained(seg)] == [("drop_egress", True)]
    # its flow is recorded: the reply comes in
    assert passes(seg, ipv4(OTHER, NODE, 6, tcp(443, 40000, 0x12)))
    _install(seg, "enforce")  # one config value: the next packet sees it
    assert not passes(seg, out_syn(OTHER, sport=40001), "egress")


def test_wildcards_cnames_expiry_and_rule_removal(seg):  # noqa: F811
    _install(seg, rules=("out *.pkg.example.test any",))
    learner = DnsLearner(seg, floor=1)
    resolve(seg, learner, "a.b.pkg.example.test", [OTHER])  # two labels: not allowed
    assert learner.counts == {"not_allowed": 1}
    resolve(seg, learner, "deb.pkg.example.test", [API], cname="cdn.elsewhere.test", ttl=300)
    assert passes(seg, out_syn(API, 80), "egress")  # any port
    assert not passes(seg, out_syn(OTHER, 80), "egress")
    (row,) = [e for e in seg.fqdn.entries() if e.kind == "learned"]
    assert row.expires_ns - time.monotonic_ns() > 290e9  # the record's TTL over the floor
    # time is up: dropped in the kernel, then swept by the agent
    fd = seg.map_fd(layout.MAP_SEG_FQDN)
    from aegis_agent.bpf import syscall
    key = layout.FQDN_KEY.pack(int(row.address), 0, 0)
    syscall.map_update(fd, key, layout.FQDN_VAL.pack(time.monotonic_ns() - 10**9, 1,
                                                     layout.FQDN_LEARNED, 1))
    assert not passes(seg, out_syn(API, 80, sport=40002), "egress")
    assert seg.fqdn.sweep() == 1
    resolve(seg, learner, "deb.pkg.example.test", [API])
    assert passes(seg, out_syn(API, 80, sport=40003), "egress")
    # the rule goes: what it taught goes with it; no rule left: egress is free again
    assert _install(seg, rules=("out api.example.test tcp/443",))["learned_removed"] == 1
    learner.counts.clear()  # the same learner sees the new set at once
    resolve(seg, learner, "deb.pkg.example.test", [API])
    resolve(seg, learner, "api.example.test", [API])
    assert learner.counts == {"not_allowed": 1, "learned": 1}
    seg.fqdn.apply({}, {}, [], [])
    assert seg.fqdn.status()["egress_restricted"] is False
    assert passes(seg, out_syn(OTHER, sport=40004), "egress")


def test_dns_capture_only_for_replies_to_the_nodes_own_queries(seg):  # noqa: F811
    _install(seg)
    seg.grant(f"any -> {NODE} udp/5353")
    # an answer nobody asked for (no flow from the node): not copied
    assert passes(seg, ipv4(RESOLVER, NODE, 17, udp(53, 5353, answer("api.example.test",
                                                                        [OTHER]))))
    got: list = []
    seg.reader(got.append, layout.MAP_SEG_DNS, DnsAnswer.unpack).drain()
    assert got == []
    assert seg.fqdn.status()["dns_answers"] == {"sent": 0, "lost": 0}


def test_bad_rules_are_refused_and_change_nothing(seg):  # noqa: F811
    _install(seg)
    before = (seg.fqdn.rules(), seg.fqdn.entries(), seg.config())
    for rules, resolvers, why in (
            (["out a*.example.test tcp/443"], [f"out {RESOLVER}"], "'*' may only"),
            (["out  tcp/443"], [f"out {RESOLVER}"], "write 'POLICY PATTERN"),
            (["out api.example.test tcp/0"], [f"out {RESOLVER}"], "port 1 to 65535"),
            (["out api.example.test tcp/443"], ["out dns.example.test"], "not an IPv4"),
            (["out api.example.test tcp/443"], [], "without a DNS resolver"),
            (["other api.example.test tcp/443"], [f"out {RESOLVER}"], "has no mode")):
        with pytest.raises(FqdnError, match=why):
            seg.fqdn.apply(seg.fqdn.policy_indexes(), {"out": "enforce"}, rules, resolvers)
    assert (seg.fqdn.rules(), seg.fqdn.entries(), seg.config()) == before


def test_answer_parsing() -> None:
    name, found = addresses(answer("API.Example.Test", [API, OTHER], ttl=5))
    assert name == "api.example.test"
    assert sorted((str(a), t) for a, t in found) == [(API, 5), (OTHER, 5)]
    for bad in (b"", b"\x00" * 5, query("api.example.test")):
        with pytest.raises(ValueError):
            addresses(bad)
