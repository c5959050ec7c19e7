"""Label policies: identity-based east-west edges between nodes selected by their labels,
and their compilation into each node's filter entries. One YAML document::

    policies:
      - name: web-db
        from: {role: web}       # source nodes, by label (all must match)
        to: {role: db}          # destination nodes: their filters get the entries
        ports: [tcp/5432]       # tcp/N, udp/N or icmp
        action: allow           # allow | drop | log (log: allow and report each packet)
        mode: observe           # observe | enforce (default enforce)
      - name: web-egress        # egress by domain (issue 15 part 5)
        from: {role: web}       # the nodes whose egress it restricts
        to_fqdns: [api.example.test, "*.pkg.example.test"]   # '*': exactly one label
        ports: [tcp/443]        # tcp/N or udp/N; default: any port
        resolvers: [10.0.0.53]  # the DNS servers they may query (udp and tcp port 53)
        mode: enforce

An entry with ``to_fqdns`` (instead of ``to``) restricts its ``from`` nodes' new outbound
flows to its resolvers and to the addresses their DNS answers give for the names listed
(learned by the agent, for max(record TTL, the agent's floor)), besides the management
path; everything else is dropped (observe: passed and reported). Its action is allow.

Checked as a whole before it replaces the policies in force (a refusal changes nothing):
every key known; label keys among ``role``, ``env`` and those some node carries (the
access policy's rule, :data:`~..access.policy.BUILTIN_LABEL_KEYS`); ports well formed;
names unique; and no two policies whose selectors can select the same pair of nodes
with a port in common and different actions (which would apply?). Two selectors can
select the same node unless they give one key different values.

Compiled against the *trusted* nodes that have an address (``nodes.address``): for each
destination node, per source node of the policy (never the node itself), one entry per
port with the policy's action, and one ``default`` entry for the pair: a packet between
the two that no rule allows is the policy's drop — in observe mode passed and counted as
a would-be drop. When several policies cover one pair, the first in the file owns the
pair's default. A node that is not trusted is in no selector: it is neither a source nor
a destination, and a destination that leaves trusted gets an empty set.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from dataclasses import dataclass, replace
from typing import Any, Literal

from aegis_protocol.fqdn import FqdnError, check_pattern, check_port

from ..access.policy import (
    BUILTIN_LABEL_KEYS,
    PolicyError,
    _mapping,
    _name,
    read_yaml,
    selector,
)

_PORT = re.compile(r"(tcp|udp)/(\d{1,5})")
_TOP = {"policies"}
_POLICY = {"name", "from", "to", "to_fqdns", "resolvers", "ports", "action", "mode"}
ACTIONS = ("allow", "drop", "log")
MODES = ("observe", "enforce")


@dataclass(frozen=True)
class LabelPolicy:
    name: str
    src: dict[str, str]
    dst: dict[str, str]
    ports: tuple[str, ...]  # canonical: tcp/5432, udp/53, icmp
    action: Literal["allow", "drop", "log"]
    mode: Literal["observe", "enforce"]
    fqdns: tuple[str, ...] = ()  # egress by domain: name patterns (then dst is empty)
    resolvers: tuple[str, ...] = ()

    def document(self) -> dict[str, Any]:
        if self.fqdns:
            return {"name": self.name, "from": self.src, "to_fqdns": list(self.fqdns),
                    "resolvers": list(self.resolvers), "ports": list(self.ports),
                    "action": self.action, "mode": self.mode}
        return {"name": self.name, "from": self.src, "to": self.dst,
                "ports": list(self.ports), "action": self.action, "mode": self.mode}


@dataclass(frozen=True)
class Node:
    node_id: str
    address: str
    labels: dict[str, str]


@dataclass(frozen=True)
class PolicySet:
    policies: tuple[LabelPolicy, ...]

    def document(self) -> dict[str, Any]:
        return {"policies": [p.document() for p in self.policies]}

    def digest(self) -> str:
        return digest_of(self.document())

    def with_mode(self, name: str, mode: str) -> PolicySet:
        if mode not in MODES:
            raise PolicyError(f"mode: {mode!r} is not observe or enforce")
        if name not in {p.name for p in self.policies}:
            raise PolicyError(f"name: no label policy {name!r} (known: "
                              f"{', '.join(p.name for p in self.policies) or 'none'})")
        return PolicySet(tuple(replace(p, mode=mode) if p.name == name else p  # type: ignore[arg-type]
                               for p in self.policies))


def digest_of(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _may_meet(a: dict[str, str], b: dict[str, str]) -> bool:
    """Whether some node could match both selectors."""
    return all(b.get(k, v) == v for k, v in a.items())


def load(text: str, label_keys: set[str] | frozenset[str] = BUILTIN_LABEL_KEYS) -> PolicySet:
    return parse(read_yaml(text), label_keys)


def parse(doc: object, label_keys: set[str] | frozenset[str] = BUILTIN_LABEL_KEYS) -> PolicySet:
    top = _mapping(doc, "label policy", _TOP)
    raw = top.get("policies")
    if not isinstance(raw, list):
        raise PolicyError("policies: expected a list of policies")
    keys = label_keys | BUILTIN_LABEL_KEYS
    policies = tuple(_policy(p, f"policies[{i}]", keys) for i, p in enumerate(raw))
    _no_conflict(policies)
    return PolicySet(policies)


def _ports(value: object, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise PolicyError(f"{where}: expected a non-empty list, e.g. [tcp/5432]")
    out = []
    for i, item in enumerate(value):
        text = str(item).strip().lower()
        m = _PORT.fullmatch(text)
        if text != "icmp" and (m is None or not 1 <= int(m.group(2)) <= 65535):
            raise PolicyError(f"{where}[{i}]: {item!r} is not tcp/PORT, udp/PORT (port 1 to "
                              "65535) or icmp, e.g. tcp/5432")
        canonical = text if m is None else f"{m.group(1)}/{int(m.group(2))}"
        if canonical in out:
            raise PolicyError(f"{where}[{i}]: {item!r} is listed twice")
        out.append(canonical)
    return tuple(out)


def _fqdn_policy(body: dict[str, Any], where: str, name: str, src: dict[str, str],
                 mode: Any) -> LabelPolicy:
    if "to" in body:
        raise PolicyError(f"{where}: give 'to' (nodes by label) or 'to_fqdns' (DNS names), "
                          "not both: write two policies")
    if body.get("action", "allow") != "allow":
        raise PolicyError(f"{where}.action: {body.get('action')!r}: a to_fqdns policy "
                          "allows (what it does not allow is dropped)")
    raw = body.get("to_fqdns")
    if not isinstance(raw, list) or not raw:
        raise PolicyError(f"{where}.to_fqdns: expected a non-empty list of DNS names, e.g. "
                          "[api.example.test, \"*.pkg.example.test\"]")
    fqdns: list[str] = []
    for i, item in enumerate(raw):
        try:
            pattern = check_pattern(item)
        except FqdnError as e:
            raise PolicyError(f"{where}.to_fqdns[{i}]: {e}") from None
        if pattern in fqdns:
            raise PolicyError(f"{where}.to_fqdns[{i}]: {item!r} is listed twice")
        fqdns.append(pattern)
    servers = body.get("resolvers")
    if not isinstance(servers, list) or not servers:
        raise PolicyError(f"{where}.resolvers: expected a non-empty list of the DNS servers' "
                          "IPv4 addresses its nodes query, e.g. [10.0.0.53]")
    resolvers = []
    for i, item in enumerate(servers):
        try:
            resolvers.append(str(ipaddress.IPv4Address(str(item))))
        except ValueError:
            raise PolicyError(f"{where}.resolvers[{i}]: {item!r} is not an IPv4 "
                              "address") from None
    return LabelPolicy(name, src, {}, _fqdn_ports(body.get("ports", ["any"]), where), "allow",
                       mode, tuple(fqdns), tuple(dict.fromkeys(resolvers)))


def _fqdn_ports(raw_ports: object, where: str) -> tuple[str, ...]:
    """A to_fqdns entry's ports: tcp/N, udp/N or any."""
    if not isinstance(raw_ports, list) or not raw_ports:
        raise PolicyError(f"{where}.ports: expected a non-empty list, e.g. [tcp/443] (or "
                          "leave it out: any port)")
    ports: list[str] = []
    for i, item in enumerate(raw_ports):
        try:
            proto, number = check_port(item)
        except FqdnError as e:
            raise PolicyError(f"{where}.ports[{i}]: {e}") from None
        canonical = "any" if proto == "any" else f"{proto}/{number}"
        if canonical in ports:
            raise PolicyError(f"{where}.ports[{i}]: {item!r} is listed twice")
        ports.append(canonical)
    return tuple(ports)


def _policy(raw: object, where: str, label_keys: set[str] | frozenset[str]) -> LabelPolicy:
    body = _mapping(raw, where, _POLICY)
    name = _name(body.get("name"), f"{where}.name")
    src = selector(body.get("from"), f"{where}.from", label_keys, "{role: web}")
    mode = body.get("mode", "enforce")
    if mode not in MODES:
        raise PolicyError(f"{where}.mode: {mode!r} is not observe or enforce")
    if "to_fqdns" in body:
        return _fqdn_policy(body, where, name, src, mode)
    for key in ("resolvers",):
        if key in body:
            raise PolicyError(f"{where}.{key}: only a to_fqdns policy has {key}")
    dst = selector(body.get("to"), f"{where}.to", label_keys, "{role: db}")
    ports = _ports(body.get("ports"), f"{where}.ports")
    action = body.get("action", "allow")
    if action not in ACTIONS:
        raise PolicyError(f"{where}.action: {action!r} is not allow, drop or log")
    return LabelPolicy(name, src, dst, ports, action, mode)


def _no_conflict(policies: tuple[LabelPolicy, ...]) -> None:
    for i, a in enumerate(policies):
        for j, b in enumerate(policies[:i]):
            if a.name == b.name:
                raise PolicyError(f"policies[{i}].name: {a.name!r} is used by policies[{j}]")
            if a.fqdns or b.fqdns:
                continue  # egress by domain only allows: nothing to conflict with
            shared = sorted(set(a.ports) & set(b.ports))
            if (a.action != b.action and shared and _may_meet(a.src, b.src)
                    and _may_meet(a.dst, b.dst)):
                raise PolicyError(
                    f"policies[{i}]: policy {a.name!r} overlaps policy {b.name!r} "
                    f"(policies[{j}]) on {', '.join(shared)} with conflicting actions "
                    f"({b.action} / {a.action}): their from and to selectors can select the "
                    "same nodes; make the selectors disjoint or the actions equal")


def compile_for(policies: PolicySet, trusted: list[Node]) -> dict[str, dict[str, Any]]:
    """Per node id: ``{"policies": [NAME=MODE...], "entries": [...]}`` for the
    ``segment-policy`` order, with ``fqdns`` and ``resolvers`` for a node a ``to_fqdns``
    policy selects with ``from`` (nodes no policy selects are left out)."""
    out: dict[str, dict[str, Any]] = {}
    for dst in trusted:
        modes: dict[str, str] = {}
        entries: dict[tuple[str, str], str] = {}  # (src address, port or "") -> entry
        fqdns: list[str] = []
        resolvers: list[str] = []
        for p in policies.policies:
            if p.fqdns:
                if selects(p.src, dst.labels):
                    modes[p.name] = p.mode
                    fqdns += [f"{p.name} {f} {port}" for f in p.fqdns for port in p.ports]
                    resolvers += [f"{p.name} {r}" for r in p.resolvers]
                continue
            if not selects(p.dst, dst.labels):
                continue
            for src in trusted:
                if src.node_id == dst.node_id or not selects(p.src, src.labels):
                    continue
                modes[p.name] = p.mode
                pair = f"{src.address} -> {dst.address}"
                for port in p.ports:
                    entries.setdefault((src.address, port),
                                       f"{p.name} {p.action} {pair} {port}")
                entries.setdefault((src.address, ""), f"{p.name} default {pair}")
        if entries or fqdns:
            body: dict[str, Any] = {
                "policies": [f"{n}={m}" for n, m in sorted(modes.items())],
                "entries": sorted(entries.values())}
            if fqdns:  # only then: the digests of other nodes' sets stay as they were
                body |= {"fqdns": fqdns, "resolvers": resolvers}
            out[dst.node_id] = body
    return out
