"""Edges (who may reach what) and management peers, parsed from a readable syntax.

An edge:   ``SOURCE -> DESTINATION PROTO[/PORT]``
    ``10.0.0.0/24 -> 192.0.2.2 tcp/22``   a source network to one address and port
    ``any -> 192.0.2.2 udp/53``           any source
    ``192.0.2.1 -> any icmp``             to any of the node's addresses
A management peer (never cut: not by the default drop, not by quarantine): ``PEER [PROTO[/PORT]]``
    ``192.0.2.10 tcp/22`` (either side's port), ``192.0.2.0/28`` (everything).
"""

from __future__ import annotations

import contextlib
import ipaddress
from dataclasses import dataclass

from . import layout
from .layout import PROTO_NAMES, PROTOS

EDGE_HELP = (
    "write an edge as 'SOURCE -> DESTINATION PROTO/PORT', e.g. "
    "'10.0.0.0/24 -> 192.0.2.2 tcp/22' (SOURCE: an IPv4 address, CIDR or 'any'; "
    "DESTINATION: an IPv4 address or 'any'; PROTO/PORT: tcp/1-65535, udp/1-65535 or icmp)"
)
PEER_HELP = (
    "write a management peer as 'ADDRESS[/PREFIX] [PROTO/PORT]', e.g. '192.0.2.10 tcp/22' "
    "or '192.0.2.0/28' (every protocol and port)"
)


class EdgeSpecError(ValueError):
    """A malformed edge or peer: the message says what was wrong and how to write it."""


def _network(text: str, what: str, spec: str, help_: str) -> ipaddress.IPv4Network:
    if text == "any":
        return ipaddress.IPv4Network("0.0.0.0/0")
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as e:
        loose = None
        with contextlib.suppress(ValueError):
            loose = ipaddress.ip_network(text, strict=False)
        if loose is not None:
            raise EdgeSpecError(
                f"bad {what} {text!r} in {spec!r}: host bits are set; did you mean "
                f"{loose}? — {help_}") from e
        raise EdgeSpecError(f"bad {what} {text!r} in {spec!r}: not an IPv4 address or "
                            f"CIDR — {help_}") from e
    if net.version != 4:
        raise EdgeSpecError(
            f"bad {what} {text!r} in {spec!r}: IPv6 edges are not supported yet (IPv6 "
            f"traffic follows the filter's ipv6 policy: allow, deny or filter) — {help_}")
    return net


def _proto_port(text: str, spec: str, help_: str, port_required: bool) -> tuple[int, int]:
    name, sep, port_text = text.partition("/")
    name = name.lower()
    if name not in PROTOS:
        raise EdgeSpecError(f"bad protocol {name!r} in {spec!r}: use tcp, udp or icmp — {help_}")
    if name == "icmp":
        if sep:
            raise EdgeSpecError(f"bad {text!r} in {spec!r}: icmp takes no port — {help_}")
        return PROTOS[name], 0
    if not sep:
        if port_required:
            raise EdgeSpecError(f"missing port in {text!r} of {spec!r}: {name} needs one, "
                                f"e.g. {name}/22 — {help_}")
        return PROTOS[name], 0
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise EdgeSpecError(f"bad port {port_text!r} in {spec!r}: use 1-65535 — {help_}")
    return PROTOS[name], int(port_text)


@dataclass(frozen=True, order=True)
class Edge:
    """One allowed ingress edge: ``src`` network (/0 = any) to ``dst`` (None = any of
    the node's addresses), protocol number and destination port (0 for icmp)."""

    src: ipaddress.IPv4Network
    dst: ipaddress.IPv4Address | None
    proto: int
    port: int

    @classmethod
    def parse(cls, spec: str | Edge) -> Edge:
        if isinstance(spec, Edge):
            return spec
        if not isinstance(spec, str):
            raise EdgeSpecError(f"bad edge {spec!r}: expected a string — {EDGE_HELP}")
        left, arrow, right = spec.partition("->")
        if not arrow:
            raise EdgeSpecError(f"bad edge {spec!r}: missing '->' — {EDGE_HELP}")
        src_text = left.strip()
        parts = right.split()
        if not src_text or len(src_text.split()) != 1:
            raise EdgeSpecError(f"bad edge {spec!r}: one SOURCE before '->' — {EDGE_HELP}")
        if len(parts) != 2:
            raise EdgeSpecError(f"bad edge {spec!r}: after '->' write DESTINATION and "
                                f"PROTO/PORT — {EDGE_HELP}")
        src = _network(src_text, "source", spec, EDGE_HELP)
        if parts[0] == "any":
            dst = None
        else:
            net = _network(parts[0], "destination", spec, EDGE_HELP)
            if net.prefixlen != 32:
                raise EdgeSpecError(f"bad destination {parts[0]!r} in {spec!r}: a single "
                                    f"address or 'any' (CIDR only on the source side) — "
                                    f"{EDGE_HELP}")
            dst = net.network_address
        proto, port = _proto_port(parts[1], spec, EDGE_HELP, port_required=True)
        return cls(src, dst, proto, port)

    @property
    def kind(self) -> layout.EdgeKind:
        k = layout.EdgeKind
        if self.src.prefixlen == 32:
            return k.SRC_DST if self.dst else k.SRC_ANYDST
        if self.src.prefixlen == 0:
            return k.ANY_DST if self.dst else k.ANY_ANYDST
        return k.CIDR_DST if self.dst else k.CIDR_ANYDST

    @property
    def in_lpm(self) -> bool:
        return self.kind in (layout.EdgeKind.CIDR_DST, layout.EdgeKind.CIDR_ANYDST)

    def key(self) -> bytes:
        src = int(self.src.network_address)
        dst = int(self.dst) if self.dst else 0
        if self.in_lpm:
            return (layout.EDGE_LPM_KEY.pack(layout.EDGE_LPM_EXACT_BITS + self.src.prefixlen)
                    + layout.EDGE_LPM_DATA.pack(self.proto, self.port, dst, src))
        return layout.EDGE_KEY.pack(src, dst, self.port, self.proto)

    @classmethod
    def from_key(cls, raw: bytes, lpm: bool) -> Edge:
        if lpm:
            (plen,) = layout.EDGE_LPM_KEY.unpack(raw[:4])
            proto, port, dst, src = layout.EDGE_LPM_DATA.unpack(raw[4:])
            net = ipaddress.IPv4Network((src, plen - layout.EDGE_LPM_EXACT_BITS))
        else:
            src, dst, port, proto = layout.EDGE_KEY.unpack(raw)
            net = ipaddress.IPv4Network((src, 32 if src else 0))
        return cls(net, ipaddress.IPv4Address(dst) if dst else None, proto, port)

    def __str__(self) -> str:
        src = "any" if self.src.prefixlen == 0 else (
            str(self.src.network_address) if self.src.prefixlen == 32 else str(self.src))
        dst = str(self.dst) if self.dst else "any"
        name = PROTO_NAMES.get(self.proto, str(self.proto))
        pp = name if self.proto == 1 else f"{name}/{self.port}"
        return f"{src} -> {dst} {pp}"


@dataclass(frozen=True, order=True)
class Peer:
    """A management peer: let in by the default drop, and both ways during quarantine."""

    net: ipaddress.IPv4Network
    proto: int = 0
    port: int = 0

    @classmethod
    def parse(cls, spec: str | Peer) -> Peer:
        if isinstance(spec, Peer):
            return spec
        parts = spec.split() if isinstance(spec, str) else []
        if not 1 <= len(parts) <= 2:
            raise EdgeSpecError(f"bad management peer {spec!r} — {PEER_HELP}")
        if parts[0] == "any":
            raise EdgeSpecError(f"bad management peer {spec!r}: 'any' would make quarantine "
                                f"a no-op; name the controller's address — {PEER_HELP}")
        net = _network(parts[0], "peer", spec, PEER_HELP)
        proto, port = (_proto_port(parts[1], spec, PEER_HELP, port_required=False)
                       if len(parts) == 2 else (0, 0))
        return cls(net, proto, port)

    def key(self) -> bytes:
        return (layout.MGMT_KEY.pack(layout.MGMT_EXACT_BITS + self.net.prefixlen)
                + layout.MGMT_DATA.pack(self.proto, self.port, int(self.net.network_address)))

    def __str__(self) -> str:
        net = str(self.net.network_address) if self.net.prefixlen == 32 else str(self.net)
        if not self.proto:
            return net
        name = PROTO_NAMES.get(self.proto, str(self.proto))
        return f"{net} {name}" if not self.port else f"{net} {name}/{self.port}"
