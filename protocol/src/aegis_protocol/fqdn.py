"""Egress by domain (issue 15 part 5): the grammar of DNS name patterns, FQDN rules and
DNS resolvers, shared by the controller (which checks a policy file and compiles it) and
the agent (which checks an order and matches DNS answers against it).

    check_pattern("API.example.test.")     -> "api.example.test"
    check_pattern("*.pkg.example.test")    -> "*.pkg.example.test"
    matches("*.pkg.example.test", "deb.pkg.example.test")   -> True  (one label)
    matches("*.pkg.example.test", "a.b.pkg.example.test")   -> False
    FqdnRule.parse("egress-api api.example.test tcp/443")
    FqdnRule.parse("egress-pkg *.pkg.example.test any")
    Resolver.parse("egress-api 192.0.2.53")

A pattern is a DNS name (letters, digits, ``-`` and ``_``, labels of 1 to 63 characters,
253 at most) or ``*.`` followed by one: ``*`` stands for exactly one label, as in
Cilium's ``matchPattern``. Names compare case-insensitively, without the trailing dot.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_PORT = re.compile(r"(tcp|udp)/(\d{1,5})")
PATTERN_HELP = ("a DNS name (api.example.test) or '*.' and a name (*.pkg.example.test: "
                "'*' is exactly one label)")
RULE_HELP = "'POLICY PATTERN PROTO/PORT' or 'POLICY PATTERN any' (PROTO tcp or udp)"
MAX_PATTERN = 253


class FqdnError(ValueError):
    """A pattern, rule or resolver that is not well formed; the message says why."""


def _name(text: str) -> str | None:
    """The reason ``text`` (lower case, no trailing dot) is no DNS name, or None."""
    if not text:
        return "it is empty"
    if len(text) > MAX_PATTERN:
        return f"it is longer than {MAX_PATTERN} characters"
    return next(filter(None, map(_label, text.split("."))), None)


def _label(label: str) -> str | None:
    """The reason ``label`` is no DNS label, or None."""
    if not label:
        return "it has an empty label ('..' or a leading dot)"
    if "*" in label:
        return "'*' may only stand alone as the first label ('*.example.test')"
    if len(label) > 63:
        return f"label {label[:20]!r}... is longer than 63 characters"
    if not _LABEL.fullmatch(label):
        return (f"label {label!r} has characters other than letters, digits, '-' and '_', "
                "or starts or ends with '-'")
    return None


def check_pattern(value: object) -> str:
    """The canonical form of a name pattern (lower case, no trailing dot), or FqdnError."""
    if not isinstance(value, str):
        raise FqdnError(f"{value!r} is not a DNS name: write {PATTERN_HELP}")
    text = value.strip().lower()
    text = text[:-1] if text.endswith(".") else text
    rest = text[2:] if text.startswith("*.") else text
    why = _name(rest)
    if why is not None:
        raise FqdnError(f"{value!r} is not a DNS name pattern: {why}; write {PATTERN_HELP}")
    return text


def canonical_name(name: str) -> str:
    """A name as patterns compare it: lower case, no trailing dot."""
    name = name.lower()
    return name[:-1] if name.endswith(".") else name


def matches(pattern: str, name: str) -> bool:
    """Whether ``name`` (any case, trailing dot or not) is one ``pattern`` allows."""
    name = canonical_name(name)
    if pattern.startswith("*."):
        head, dot, tail = name.partition(".")
        return bool(head) and bool(dot) and tail == pattern[2:]
    return name == pattern


def check_port(value: object) -> tuple[str, int]:
    """``tcp/443`` -> ("tcp", 443); ``any`` -> ("any", 0)."""
    text = str(value).strip().lower()
    if text == "any":
        return "any", 0
    m = _PORT.fullmatch(text)
    if m is None or not 1 <= int(m.group(2)) <= 65535:
        raise FqdnError(f"{value!r} is not tcp/PORT or udp/PORT (port 1 to 65535) or any")
    return m.group(1), int(m.group(2))


@dataclass(frozen=True, order=True)
class FqdnRule:
    """One name pattern of an FQDN policy with one port (``proto`` "any": every port)."""

    policy: str
    pattern: str
    proto: str  # tcp | udp | any
    port: int  # 0 with any

    @classmethod
    def parse(cls, spec: str) -> FqdnRule:
        words = spec.split()
        if len(words) != 3:
            raise FqdnError(f"bad FQDN rule {spec!r}: write {RULE_HELP}")
        policy, pattern, port = words
        try:
            proto, number = check_port(port)
            return cls(policy, check_pattern(pattern), proto, number)
        except FqdnError as e:
            raise FqdnError(f"bad FQDN rule {spec!r}: {e}") from None

    def __str__(self) -> str:
        port = "any" if self.proto == "any" else f"{self.proto}/{self.port}"
        return f"{self.policy} {self.pattern} {port}"


@dataclass(frozen=True, order=True)
class Resolver:
    """A DNS server an FQDN policy's nodes may query (udp and tcp port 53)."""

    policy: str
    address: ipaddress.IPv4Address

    @classmethod
    def parse(cls, spec: str) -> Resolver:
        words = spec.split()
        if len(words) != 2:
            raise FqdnError(f"bad DNS resolver {spec!r}: write 'POLICY ADDRESS' (IPv4)")
        try:
            address = ipaddress.IPv4Address(words[1])
        except ValueError:
            raise FqdnError(f"bad DNS resolver {spec!r}: {words[1]!r} is not an IPv4 "
                            "address") from None
        if address.is_unspecified:
            raise FqdnError(f"bad DNS resolver {spec!r}: 0.0.0.0 is no server")
        return cls(words[0], address)

    def __str__(self) -> str:
        return f"{self.policy} {self.address}"
