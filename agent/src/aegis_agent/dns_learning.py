"""Learning the addresses of allowed names from DNS answers (issue 15 part 5).

The segment filter copies every DNS answer this node receives (a reply to a UDP flow it
opened to port 53) into the ``seg_dns`` ring; ``DnsLearner.handle`` parses one with
dnspython, and when the question's name is one an FQDN rule allows, writes the answer's
IPv4 addresses (those of the name and of the CNAME chain from it) into ``seg_fqdn`` for
max(record TTL, floor) seconds. Only answers from a resolver the policy names count:
an answer from another server teaches nothing.

    learner = DnsLearner(seg, floor=60)
    reader = learner.reader()        # the daemon: loop.add_reader(reader.fileno(), reader.drain)
"""

from __future__ import annotations

import ipaddress
import logging
from collections import Counter
from dataclasses import dataclass, field

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype

from aegis_protocol.fqdn import FqdnRule, canonical_name, matches

from .bpf import layout
from .bpf.ring import RingReader
from .bpf.segment import SegmentFilter
from .bpf.syscall import BpfError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DnsAnswer:
    """One DNS answer off the ring: who answered, and its payload (maybe cut short)."""

    ts_ns: int
    server: ipaddress.IPv4Address
    client: ipaddress.IPv4Address
    payload: bytes
    truncated: bool  # longer than DNS_CAPTURE_MAX: only the start was copied

    @classmethod
    def unpack(cls, raw: bytes) -> DnsAnswer:
        ts, server, client, length, orig, _ifindex, data = layout.DNS_REC.unpack(
            raw[:layout.DNS_REC.size])
        return cls(ts, ipaddress.IPv4Address(server), ipaddress.IPv4Address(client),
                   data[:length], orig > length)


def addresses(payload: bytes) -> tuple[str, list[tuple[ipaddress.IPv4Address, int]]]:
    """The question name of a DNS response and its IPv4 answers with their TTLs (the A
    records of the name and of the CNAME chain from it); raises ValueError for anything
    that is not a well-formed NOERROR response with one question."""
    try:
        msg = dns.message.from_wire(payload)
    except (dns.exception.DNSException, ValueError) as e:
        raise ValueError(f"not a DNS message: {type(e).__name__}: {e}") from None
    if not msg.flags & dns.flags.QR or msg.rcode() != dns.rcode.NOERROR:
        raise ValueError("not a successful response")
    if len(msg.question) != 1:
        raise ValueError(f"{len(msg.question)} questions")
    qname = msg.question[0].name
    chain, found = {qname}, []
    for _ in range(16):  # follow CNAMEs in whatever order the server wrote them
        grew = False
        for rrset in msg.answer:
            if rrset.name in chain and rrset.rdtype == dns.rdatatype.CNAME:
                for rd in rrset:
                    if rd.target not in chain:
                        chain.add(rd.target)
                        grew = True
        if not grew:
            break
    for rrset in msg.answer:
        if rrset.name in chain and rrset.rdtype == dns.rdatatype.A:
            found += [(ipaddress.IPv4Address(rd.address), rrset.ttl) for rd in rrset]
    return canonical_name(qname.to_text()), found


@dataclass
class _RuleSet:
    """The installed rules as the learner last read them (re-read when their generation
    changes: one map lookup per answer instead of a walk of three maps)."""

    generation: bytes = b""
    resolvers: set[ipaddress.IPv4Address] = field(default_factory=set)
    rules: dict[int, FqdnRule] = field(default_factory=dict)
    index: dict[str, int] = field(default_factory=dict)


class DnsLearner:
    """Turns DNS answers into seg_fqdn rows of the rules they match."""

    def __init__(self, seg: SegmentFilter, floor: float = 60.0) -> None:
        self.seg = seg
        self.floor = floor
        self.counts: Counter[str] = Counter()  # answers by outcome (status, metrics)
        self._set = _RuleSet()

    def _rule_set(self) -> _RuleSet:
        fq = self.seg.fqdn
        generation = fq.generation()
        if generation != self._set.generation or not generation:
            self._set = _RuleSet(generation, fq.resolvers(), fq.rules(), fq.policy_indexes())
        return self._set

    def reader(self) -> RingReader[DnsAnswer]:
        """A reader of seg_dns learning from each answer (closed with the filter)."""
        return self.seg.reader(self._sink, layout.MAP_SEG_DNS, DnsAnswer.unpack)

    def _sink(self, answer: DnsAnswer) -> None:
        try:
            self.handle(answer)
        except (BpfError, OSError) as e:  # a map write failed: the answer is lost, said
            self.counts["failed"] += 1
            log.error("DNS answer from %s not learned from: %s", answer.server, e)

    def handle(self, answer: DnsAnswer) -> int:
        """Learn from one answer; returns how many rows it wrote (never raises for a bad
        answer: it is counted and logged)."""
        now = self._rule_set()
        if answer.server not in now.resolvers:
            self.counts["other_server"] += 1
            return 0
        try:
            name, found = addresses(answer.payload)
        except ValueError as e:
            self.counts["unparsed"] += 1
            log.info("DNS answer from %s not learned from: %s%s", answer.server, e,
                     " (cut at the capture size)" if answer.truncated else "")
            return 0
        rules = [(slot, r) for slot, r in now.rules.items() if matches(r.pattern, name)]
        if not rules or not found:
            self.counts["not_allowed" if not rules else "no_address"] += 1
            return 0
        written = 0
        for slot, rule in rules:
            if rule.policy in now.index:
                written += self.seg.fqdn.learn(slot, rule, now.index[rule.policy], found,
                                               self.floor)
        self.counts["learned"] += 1
        log.info("learned %s -> %s (%s)", name, ", ".join(str(a) for a, _t in found),
                 ", ".join(str(r) for _s, r in rules))
        return written
