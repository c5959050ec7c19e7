"""The access policy: which access roles may reach which services, for how long, and who
must approve. One YAML document::

    roles:                      # access role: the identity provider's groups holding it
      developer: [dev]
      dba: [dba]
      admin: [ops-admins]
      security: [security]
      contractor: [contractors]
    services:                   # a service: the nodes (by label) and one proto/port
      db:
        nodes: {role: db}
        port: tcp/5432
      db-ssh:                   # kind ssh: the grant carries an SSH user certificate
        nodes: {role: db, env: prod}
        port: tcp/22
        kind: ssh
    rules:
      - name: developers-db     # granted at once, at most one hour
        service: db
        roles: [developer]
        max_ttl: 1h
      - name: contractors-never
        service: db
        roles: [contractor]
        action: deny
      - name: admin-ssh         # two different approvers of role security or dba
        service: db-ssh
        roles: [admin]
        max_ttl: 30m
        approvers: [security, dba]
        approvals: 2

Checked as a whole before it replaces the policy in force (a refusal changes nothing):
every key known, ``kind`` ``network`` (the default: an edge only) or ``ssh`` (on a tcp
port; the grant also carries an SSH user certificate for the user's public key), label
keys among those nodes carry (``role`` and ``env`` always), roles
and services defined before use, ``approvals`` 0 to 2 and at least 1 when ``approvers``
are named, and no two rules for one service sharing a role (overlapping rules, whether
their actions conflict or not — which one would apply?). A user's request is decided by
the rules of the service that name one of the user's roles: any ``deny`` refuses; else the
first ``allow`` in file order applies. A requester never approves their own request.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Literal

import yaml

from aegis_protocol.access import parse_duration

#: Label keys every policy may use; any other must be carried by some node.
BUILTIN_LABEL_KEYS = frozenset({"role", "env"})
#: The longest any rule may grant.
MAX_TTL = 24 * 3600
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_PORT = re.compile(r"(tcp|udp)/(\d{1,5})")
_TOP = {"roles", "services", "rules"}
_SERVICE = {"nodes", "port", "kind"}
KINDS = ("network", "ssh")
_RULE = {"name", "service", "roles", "action", "max_ttl", "approvers", "approvals"}


class PolicyError(ValueError):
    """The policy is refused; the message names the field (e.g. ``rules[2].max_ttl``)."""


@dataclass(frozen=True)
class Service:
    name: str
    nodes: dict[str, str]
    proto: str
    port: int
    kind: str = "network"

    def selects(self, labels: dict[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.nodes.items())


@dataclass(frozen=True)
class Rule:
    name: str
    service: str
    roles: tuple[str, ...]
    action: Literal["allow", "deny"]
    max_ttl: int
    approvers: tuple[str, ...]
    approvals: int

    def terms(self, policy: Policy) -> dict[str, Any]:
        """What a request decided by this rule keeps: the rule, the service, and the IdP
        groups its approvers must be in (the policy may change while it is pending)."""
        svc = policy.services[self.service]
        return {"rule": self.name, "service": svc.name, "nodes": svc.nodes,
                "proto": svc.proto, "port": svc.port, "kind": svc.kind,
                "max_ttl": self.max_ttl,
                "approvals": self.approvals, "approver_roles": list(self.approvers),
                "approver_groups": sorted({g for r in self.approvers
                                           for g in policy.roles[r]})}


@dataclass(frozen=True)
class Policy:
    roles: dict[str, tuple[str, ...]]
    services: dict[str, Service]
    rules: tuple[Rule, ...]

    def roles_of(self, groups: tuple[str, ...] | list[str]) -> set[str]:
        held = set(groups)
        return {role for role, gs in self.roles.items() if held & set(gs)}

    def decide(self, service: str, groups: tuple[str, ...] | list[str]) -> Rule:
        """The rule that decides a request of a user in ``groups``; PolicyError (with the
        reason the user sees) when none allows it."""
        if service not in self.services:
            raise PolicyError(f"service: no service {service!r} in the access policy "
                              f"(known: {', '.join(sorted(self.services)) or 'none'})")
        roles = self.roles_of(groups)
        matching = [r for r in self.rules if r.service == service and roles & set(r.roles)]
        for rule in matching:
            if rule.action == "deny":
                raise PolicyError(f"service: access to {service!r} is denied to your roles "
                                  f"by rule {rule.name!r}")
        if not matching:
            mine = ", ".join(sorted(roles)) or "none (groups: " + (
                ", ".join(groups) or "none") + ")"
            raise PolicyError(f"service: no rule of the access policy lets your roles "
                              f"({mine}) reach {service!r}")
        return matching[0]

    def document(self) -> dict[str, Any]:
        return {"roles": {k: list(v) for k, v in self.roles.items()},
                "services": {n: {"nodes": s.nodes, "port": f"{s.proto}/{s.port}",
                                 **({"kind": s.kind} if s.kind != "network" else {})}
                             for n, s in self.services.items()},
                "rules": [{"name": r.name, "service": r.service, "roles": list(r.roles),
                           "action": r.action, "max_ttl": r.max_ttl,
                           "approvers": list(r.approvers), "approvals": r.approvals}
                          for r in self.rules]}

    def digest(self) -> str:
        text = json.dumps(self.document(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


def load(text: str, label_keys: set[str] | frozenset[str] = BUILTIN_LABEL_KEYS) -> Policy:
    """The policy in ``text`` (YAML or the stored JSON); ``label_keys``: the keys a
    service's ``nodes`` selector may use."""
    return parse(read_yaml(text), label_keys)


def read_yaml(text: str) -> object:
    """A policy file's document; PolicyError when it is not YAML."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise PolicyError(f"not valid YAML: {e}") from None


def parse(doc: object, label_keys: set[str] | frozenset[str] = BUILTIN_LABEL_KEYS) -> Policy:
    top = _mapping(doc, "policy", _TOP)
    roles = _roles(top.get("roles") or {})
    services = _services(top.get("services") or {}, label_keys | BUILTIN_LABEL_KEYS)
    raw_rules = top.get("rules") or []
    if not isinstance(raw_rules, list):
        raise PolicyError("rules: expected a list of rules")
    rules = tuple(_rule(r, f"rules[{i}]", roles, services) for i, r in enumerate(raw_rules))
    _no_overlap(rules)
    return Policy(roles=roles, services=services, rules=rules)


def _mapping(value: object, where: str, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise PolicyError(f"{where}: expected a mapping")
    unknown = sorted(str(k) for k in value if k not in allowed)
    if unknown:
        raise PolicyError(f"{where}.{unknown[0]}: unknown key (known: "
                          f"{', '.join(sorted(allowed))})")
    return value


def _name(value: object, where: str) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise PolicyError(f"{where}: {value!r} is not a name (1 to 63 letters, digits, "
                          "'.', '_' or '-')")
    return value


def _names(value: object, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise PolicyError(f"{where}: expected a list of names")
    return tuple(_name(v, f"{where}[{i}]") for i, v in enumerate(value))


def _roles(raw: object) -> dict[str, tuple[str, ...]]:
    if not isinstance(raw, dict):
        raise PolicyError("roles: expected a mapping of role -> list of groups")
    roles = {}
    for role, given in raw.items():
        where = f"roles.{role}"
        _name(role, where)
        groups = [given] if isinstance(given, str) else given
        if not isinstance(groups, list) or not groups or not all(
                isinstance(g, str) and 0 < len(g) <= 255 for g in groups):
            raise PolicyError(f"{where}: expected a non-empty list of group names (the "
                              "identity provider's groups claim)")
        roles[role] = tuple(groups)
    return roles


def _services(raw: object, label_keys: set[str] | frozenset[str]) -> dict[str, Service]:
    if not isinstance(raw, dict):
        raise PolicyError("services: expected a mapping of service name -> nodes and port")
    services = {}
    for name, given in raw.items():
        where = f"services.{name}"
        _name(name, where)
        body = _mapping(given, where, _SERVICE)
        nodes = selector(body.get("nodes"), f"{where}.nodes", label_keys, "{role: db}")
        m = _PORT.fullmatch(str(body.get("port", "")))
        if m is None or not 1 <= int(m.group(2)) <= 65535:
            raise PolicyError(f"{where}.port: {body.get('port')!r} is not PROTO/PORT (tcp or "
                              "udp, port 1 to 65535), e.g. tcp/5432")
        kind = body.get("kind", "network")
        if kind not in KINDS:
            raise PolicyError(f"{where}.kind: {kind!r} is not {' or '.join(KINDS)}")
        if kind == "ssh" and m.group(1) != "tcp":
            raise PolicyError(f"{where}.kind: ssh needs a tcp port, not {body.get('port')}")
        services[name] = Service(name, nodes, m.group(1), int(m.group(2)), kind)
    return services


def selector(value: object, where: str, label_keys: set[str] | frozenset[str],
             example: str) -> dict[str, str]:
    """A label selector (``{role: db, env: prod}``): every key among ``label_keys``."""
    if not isinstance(value, dict) or not value:
        raise PolicyError(f"{where}: expected a mapping of label -> value, e.g. {example}")
    for key, v in value.items():
        if key not in label_keys:
            raise PolicyError(f"{where}.{key}: unknown label key (no node carries it; known: "
                              f"{', '.join(sorted(label_keys))}); set node labels with "
                              "`aegis-controller node labels NODE KEY=VALUE`")
        if not isinstance(v, str | int) or isinstance(v, bool):
            raise PolicyError(f"{where}.{key}: expected a label value (a string)")
    return {str(k): str(v) for k, v in value.items()}


def _rule(raw: object, where: str, roles: dict[str, tuple[str, ...]],
          services: dict[str, Service]) -> Rule:
    body = _mapping(raw, where, _RULE)
    name = _name(body.get("name"), f"{where}.name")
    service = body.get("service")
    if service not in services:
        raise PolicyError(f"{where}.service: {service!r} is not a service of this policy "
                          f"(known: {', '.join(sorted(services)) or 'none'})")
    rule_roles = _names(body.get("roles"), f"{where}.roles")
    approvers = _names(body.get("approvers") or [], f"{where}.approvers")
    for field_name, names in (("roles", rule_roles), ("approvers", approvers)):
        for r in names:
            if r not in roles:
                raise PolicyError(f"{where}.{field_name}: {r!r} is not a role of this policy "
                                  f"(known: {', '.join(sorted(roles)) or 'none'})")
    if not rule_roles:
        raise PolicyError(f"{where}.roles: name at least one role")
    action = body.get("action", "allow")
    if action not in ("allow", "deny"):
        raise PolicyError(f"{where}.action: {action!r} is not allow or deny")
    try:
        max_ttl = parse_duration(body.get("max_ttl", "1h"), f"{where}.max_ttl")
    except ValueError as e:
        raise PolicyError(str(e)) from None
    if max_ttl > MAX_TTL:
        raise PolicyError(f"{where}.max_ttl: {max_ttl} s is over the longest grant "
                          f"({MAX_TTL} s)")
    approvals = body.get("approvals", 1 if approvers else 0)
    if not isinstance(approvals, int) or isinstance(approvals, bool) or \
            not 0 <= approvals <= 2:
        raise PolicyError(f"{where}.approvals: {approvals!r} is not 0, 1 or 2")
    if approvals and not approvers:
        raise PolicyError(f"{where}.approvers: {approvals} approval(s) needed but no "
                          "approver role named")
    if approvers and not approvals:
        raise PolicyError(f"{where}.approvals: approvers are named, so at least 1")
    return Rule(name, service, rule_roles, action, max_ttl, approvers, approvals)


def _no_overlap(rules: tuple[Rule, ...]) -> None:
    names: set[str] = set()
    for i, a in enumerate(rules):
        if a.name in names:
            raise PolicyError(f"rules[{i}].name: {a.name!r} is used by an earlier rule")
        names.add(a.name)
        for j, b in enumerate(rules[:i]):
            shared = set(a.roles) & set(b.roles)
            if a.service == b.service and shared:
                what = (f"conflicting actions ({b.action} / {a.action})"
                        if a.action != b.action else "which one applies is ambiguous")
                raise PolicyError(
                    f"rules[{i}]: rule {a.name!r} overlaps rule {b.name!r} (rules[{j}]) on "
                    f"service {a.service!r} for role(s) {', '.join(sorted(shared))}: "
                    f"{what}; give each role one rule per service")
