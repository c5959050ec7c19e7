"""Egress by domain in the segment filter (issue 15 part 5): the FQDN rules and DNS
resolvers of the policies that select this node, and the addresses it learned from DNS
answers.

    fq = seg.fqdn
    fq.apply({"egress-api": 3}, {"egress-api": "enforce"},
             ["egress-api api.example.test tcp/443"], ["egress-api 192.0.2.53"])
    fq.learn(rule_index, [(IPv4Address("192.0.2.10"), 30)], floor=60)   # from dns_learning
    fq.entries(); fq.sweep()

Three pinned maps, so everything survives an agent restart (the kernel keeps enforcing,
and a restarted agent learns with the same rules without asking its controller):
``seg_fqdn_rules`` holds the rules (user space only), ``seg_fqdn`` the addresses the
egress program allows — the resolvers (never expire) and the learned addresses (expire at
max(record TTL, floor)) — and ``seg_dns`` brings the DNS answers up. Flags in the config:
CFG_EGRESS (any rule or resolver: new flows only to seg_fqdn and the management path),
CFG_EGRESS_OBSERVE (no FQDN policy of the node enforces: would-be drops pass, reported),
CFG_DNS_LEARN (rules exist: copy DNS answers).
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aegis_protocol.fqdn import FqdnError, FqdnRule, Resolver

from . import layout, syscall

if TYPE_CHECKING:
    from .segment import SegmentFilter

_ANY = (0, 0)  # (proto, port) of an entry for every port
DNS_PORT = 53


@dataclass(frozen=True)
class Learned:
    """One row of seg_fqdn."""

    address: ipaddress.IPv4Address
    proto: str  # tcp | udp | icmp | any
    port: int
    expires_ns: int  # CLOCK_MONOTONIC, 0: never
    policy: str | None
    kind: str  # resolver | learned
    pattern: str | None

    def as_dict(self, now_ns: int) -> dict[str, object]:
        return {"address": str(self.address),
                "port": "any" if self.proto == "any" else f"{self.proto}/{self.port}",
                "kind": self.kind, "policy": self.policy, "pattern": self.pattern,
                "expires_in_s": (round((self.expires_ns - now_ns) / 1e9, 1)
                                 if self.expires_ns else None)}


def _proto_port(rule: FqdnRule) -> tuple[int, int]:
    return _ANY if rule.proto == "any" else (layout.PROTOS[rule.proto], rule.port)


def _key(address: int, proto: int, port: int) -> bytes:
    return layout.FQDN_KEY.pack(address, port, proto)


def checked(modes: Mapping[str, object], rules: Iterable[str], resolvers: Iterable[str]
            ) -> tuple[list[FqdnRule], list[Resolver]]:
    """Parse and check ``rules`` and ``resolvers`` of the policies ``modes`` names (before
    anything is written); raises FqdnError naming the bad item."""
    parsed = sorted({FqdnRule.parse(r) for r in rules})
    servers = sorted({Resolver.parse(r) for r in resolvers})
    for item in [*parsed, *servers]:
        if item.policy not in modes:
            raise FqdnError(f"{item} names policy {item.policy!r}, which has no mode: "
                            "list it as NAME=observe|enforce")
    if len(parsed) >= layout.FQDN_MAX_RULES:
        raise FqdnError(f"too many FQDN rules ({len(parsed)}): the filter holds "
                        f"{layout.FQDN_MAX_RULES - 1}")
    for r in parsed:
        if len(r.pattern.encode()) >= layout.FQDN_PATTERN_LEN:
            raise FqdnError(f"FQDN rule {r}: the pattern is too long")
    if parsed and not servers:
        raise FqdnError("FQDN rules without a DNS resolver: the node could resolve nothing "
                        "(give the policy's resolvers)")
    return parsed, servers


class FqdnPolicies:
    """The FQDN maps of one loaded :class:`SegmentFilter`."""

    def __init__(self, seg: SegmentFilter) -> None:
        self.seg = seg

    def _fd(self, name: str) -> int:
        return self.seg.map_fd(name)

    # -- rules ----------------------------------------------------------------------------
    def rules(self) -> dict[int, FqdnRule]:
        """slot -> rule of the installed rules."""
        fd, out = self._fd(layout.MAP_SEG_FQDN_RULES), {}
        names = self._policy_names()
        for idx in range(1, layout.FQDN_MAX_RULES):
            raw = syscall.map_lookup(fd, idx.to_bytes(4, "little"), layout.FQDN_RULE.size)
            if raw is None:
                continue
            policy, dport, proto, pattern = layout.FQDN_RULE.unpack(raw)
            if not policy or policy not in names:
                continue
            pname = layout.PROTO_NAMES.get(proto, "any") if proto else "any"
            out[idx] = FqdnRule(names[policy], pattern.split(b"\0", 1)[0].decode(), pname,
                                int.from_bytes(dport, "big"))
        return out

    def _policy_names(self) -> dict[int, str]:
        fd, out = self._fd(layout.MAP_SEG_POLICIES), {}
        for idx in range(1, layout.POL_MAX_POLICIES):
            raw = syscall.map_lookup(fd, idx.to_bytes(4, "little"), layout.POL_POLICY.size)
            if raw is not None:
                name = layout.POL_POLICY.unpack(raw)[1].split(b"\0", 1)[0].decode()
                if name:
                    out[idx] = name
        return out

    def generation(self) -> bytes:
        """Changes whenever ``apply`` runs (one lookup: a learner's cue to re-read)."""
        raw = syscall.map_lookup(self._fd(layout.MAP_SEG_FQDN_RULES), bytes(4),
                                 layout.FQDN_RULE.size)
        return raw or b""

    def resolvers(self) -> set[ipaddress.IPv4Address]:
        return {ipaddress.IPv4Address(layout.FQDN_KEY.unpack(key)[0])
                for key, row in self._rows().items() if row[2] & layout.FQDN_RESOLVER}

    # -- writing --------------------------------------------------------------------------
    def apply(self, index: Mapping[str, int], modes: Mapping[str, str], rules: Iterable[str],
              resolvers: Iterable[str]) -> dict[str, int]:
        """Make the maps hold exactly ``rules`` and ``resolvers`` (all checked first);
        ``index``: each policy's seg_policies index (``LabelPolicies.apply`` gave it).
        Kept rules keep their slot and their learned addresses; the addresses learned for
        a rule that is gone are removed. Returns counts."""
        parsed, servers = checked(index, rules, resolvers)
        old = self.rules()
        slot_of = {rule: slot for slot, rule in old.items()}
        free = iter(sorted(set(range(1, layout.FQDN_MAX_RULES)) - set(old)))
        fd = self._fd(layout.MAP_SEG_FQDN_RULES)
        wanted: dict[int, FqdnRule] = {}
        for r in parsed:
            slot = slot_of.get(r) or next(free)
            wanted[slot] = r
            proto, port = _proto_port(r)
            syscall.map_update(fd, slot.to_bytes(4, "little"), layout.FQDN_RULE.pack(
                index[r.policy], port.to_bytes(2, "big"), proto, r.pattern.encode()))
        for slot in old:
            if slot not in wanted:
                syscall.map_update(fd, slot.to_bytes(4, "little"), bytes(layout.FQDN_RULE.size))
        # slot 0 (no rule) holds the set's generation: a learner re-reads the set on a change
        syscall.map_update(fd, bytes(4), layout.FQDN_RULE.pack(
            0, bytes(2), 0, str(time.monotonic_ns()).encode()))
        learned_gone = self._write_resolvers_and_prune(servers, index, set(wanted))
        cfg = self.seg.config()
        flags = cfg.flags & ~(layout.CFG_EGRESS | layout.CFG_EGRESS_OBSERVE
                              | layout.CFG_DNS_LEARN)
        egress_policies = {x.policy for x in [*parsed, *servers]}
        if egress_policies:
            flags |= layout.CFG_EGRESS
            if all(modes.get(p) == "observe" for p in egress_policies):
                flags |= layout.CFG_EGRESS_OBSERVE
        if parsed:
            flags |= layout.CFG_DNS_LEARN
        if flags != cfg.flags:
            cfg.flags = flags
            self.seg._write_config(cfg)
        return {"fqdn_rules": len(parsed), "resolvers": len(servers),
                "learned_removed": learned_gone}

    def _write_resolvers_and_prune(self, servers: list[Resolver], index: Mapping[str, int],
                                   live_rules: set[int]) -> int:
        """Resolver rows exactly ``servers``; learned rows of a rule gone are removed."""
        fd = self._fd(layout.MAP_SEG_FQDN)
        want = {}
        for s in servers:
            for proto in ("udp", "tcp"):
                key = _key(int(s.address), layout.PROTOS[proto], DNS_PORT)
                want.setdefault(key, layout.FQDN_VAL.pack(0, index[s.policy],
                                                          layout.FQDN_RESOLVER, 0))
        learned_gone = 0
        for key, (_exp, _pol, flags, rule) in self._rows().items():
            if flags & layout.FQDN_RESOLVER and key not in want:
                syscall.map_delete(fd, key)
            elif flags & layout.FQDN_LEARNED and rule not in live_rules:
                syscall.map_delete(fd, key)
                learned_gone += 1
        for key, value in want.items():
            syscall.map_update(fd, key, value)
        return learned_gone

    def learn(self, rule_slot: int, rule: FqdnRule, policy_index: int,
              answers: Iterable[tuple[ipaddress.IPv4Address, int]], floor: float) -> int:
        """Allow ``rule``'s port to each answered address until now + max(TTL, floor);
        an address already allowed longer keeps its expiry. Returns rows written."""
        fd = self._fd(layout.MAP_SEG_FQDN)
        proto, port = _proto_port(rule)
        now = time.monotonic_ns()
        done = 0
        for address, ttl in answers:
            key = _key(int(address), proto, port)
            expires = now + int(max(ttl, floor) * 1e9)
            raw = syscall.map_lookup(fd, key, layout.FQDN_VAL.size)
            if raw is not None:
                old_exp, _p, flags, _r = layout.FQDN_VAL.unpack(raw)
                if flags & layout.FQDN_RESOLVER or old_exp >= expires:
                    continue
            syscall.map_update(fd, key, layout.FQDN_VAL.pack(expires, policy_index,
                                                             layout.FQDN_LEARNED, rule_slot))
            done += 1
        return done

    def policy_indexes(self) -> dict[str, int]:
        """name -> seg_policies index of the installed policies."""
        return {n: i for i, n in self._policy_names().items()}

    # -- reading and sweeping -------------------------------------------------------------
    def _rows(self) -> dict[bytes, tuple[int, int, int, int]]:
        rows = syscall.map_rows(self._fd(layout.MAP_SEG_FQDN), layout.FQDN_KEY.size,
                                layout.FQDN_VAL.size)
        return {key: layout.FQDN_VAL.unpack(raw) for key, raw in rows.items()}

    def entries(self) -> list[Learned]:
        names, rules = self._policy_names(), self.rules()
        out = []
        for key, (exp, pol, flags, rule) in self._rows().items():
            dst, port, proto = layout.FQDN_KEY.unpack(key)
            out.append(Learned(ipaddress.IPv4Address(dst),
                               layout.PROTO_NAMES.get(proto, "any") if proto else "any",
                               port, exp, names.get(pol),
                               "resolver" if flags & layout.FQDN_RESOLVER else "learned",
                               rules[rule].pattern if rule in rules else None))
        return sorted(out, key=lambda e: (e.kind, e.address, e.proto, e.port))

    def sweep(self) -> int:
        """Remove learned rows whose time is up; returns how many."""
        fd, now, gone = self._fd(layout.MAP_SEG_FQDN), time.monotonic_ns(), 0
        for key, (exp, _pol, flags, _rule) in self._rows().items():
            if flags & layout.FQDN_LEARNED and exp and exp <= now:
                gone += syscall.map_delete(fd, key)
        return gone

    def status(self) -> dict[str, object]:
        cfg = self.seg.config()
        rows = self._rows().values()
        return {"egress_restricted": bool(cfg.flags & layout.CFG_EGRESS),
                "egress_mode": ("observe" if cfg.flags & layout.CFG_EGRESS_OBSERVE
                                else "enforce") if cfg.flags & layout.CFG_EGRESS else None,
                "fqdn_rules": [str(r) for r in self.rules().values()],
                "resolvers": sum(1 for r in rows if r[2] & layout.FQDN_RESOLVER) // 2,
                "learned": sum(1 for r in rows if r[2] & layout.FQDN_LEARNED),
                "dns_answers": {name: self.seg.percpu_sum(layout.MAP_SEG_COUNTERS, slot)
                                for name, slot in layout.SLOT_DNS.items()}}
