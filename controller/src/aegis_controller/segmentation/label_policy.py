"""Label policies: identity-based east-west edges between nodes selected by their labels,
and their compilation into each node's filter entries. One YAML document::

    policies:
      - name: web-db
        from: {role: web}       # source nodes, by label (all must match)
        to: {role: db}          # destination nodes: their filters get the entries
        ports: [tcp/5432]       # tcp/N, udp/N or icmp
        action: allow           # allow | drop | log (log: allow and report each packet)
        mode: observe           # observe | enforce (default enforce)

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
import json
import re
from dataclasses import dataclass
from typing import Any, Literal

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
_POLICY = {"name", "from", "to", "ports", "action", "mode"}
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

    def document(self) -> dict[str, Any]:
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
        return PolicySet(tuple(LabelPolicy(p.name, p.src, p.dst, p.ports, p.action,
                                           mode if p.name == name else p.mode)  # type: ignore[arg-type]
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


def _policy(raw: object, where: str, label_keys: set[str] | frozenset[str]) -> LabelPolicy:
    body = _mapping(raw, where, _POLICY)
    name = _name(body.get("name"), f"{where}.name")
    src = selector(body.get("from"), f"{where}.from", label_keys, "{role: web}")
    dst = selector(body.get("to"), f"{where}.to", label_keys, "{role: db}")
    ports = _ports(body.get("ports"), f"{where}.ports")
    action = body.get("action", "allow")
    if action not in ACTIONS:
        raise PolicyError(f"{where}.action: {action!r} is not allow, drop or log")
    mode = body.get("mode", "enforce")
    if mode not in MODES:
        raise PolicyError(f"{where}.mode: {mode!r} is not observe or enforce")
    return LabelPolicy(name, src, dst, ports, action, mode)


def _no_conflict(policies: tuple[LabelPolicy, ...]) -> None:
    for i, a in enumerate(policies):
        for j, b in enumerate(policies[:i]):
            if a.name == b.name:
                raise PolicyError(f"policies[{i}].name: {a.name!r} is used by policies[{j}]")
            shared = sorted(set(a.ports) & set(b.ports))
            if (a.action != b.action and shared and _may_meet(a.src, b.src)
                    and _may_meet(a.dst, b.dst)):
                raise PolicyError(
                    f"policies[{i}]: policy {a.name!r} overlaps policy {b.name!r} "
                    f"(policies[{j}]) on {', '.join(shared)} with conflicting actions "
                    f"({b.action} / {a.action}): their from and to selectors can select the "
                    "same nodes; make the selectors disjoint or the actions equal")


def compile_for(policies: PolicySet, trusted: list[Node]) -> dict[str, dict[str, Any]]:
    """Per destination node id: ``{"policies": [NAME=MODE...], "entries": [...]}`` for the
    ``segment-policy`` order (nodes no policy selects as a destination are left out)."""
    out: dict[str, dict[str, Any]] = {}
    for dst in trusted:
        modes: dict[str, str] = {}
        entries: dict[tuple[str, str], str] = {}  # (src address, port or "") -> entry
        for p in policies.policies:
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
        if entries:
            out[dst.node_id] = {"policies": [f"{n}={m}" for n, m in sorted(modes.items())],
                                "entries": sorted(entries.values())}
    return out
