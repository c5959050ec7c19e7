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
import re
import socket
import struct
from dataclasses import dataclass
from typing import NamedTuple

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


_U32 = struct.Struct("!I").unpack
#: an edge written the way ``str(Edge)`` writes it (what batches carry); anything else, and
#: anything this matches but the checks refuse, takes the general path and its errors
_CANONICAL = re.compile(r"(\d{1,3}(?:\.\d{1,3}){3})(?:/(\d{1,2}))? -> "
                        r"(any|\d{1,3}(?:\.\d{1,3}){3}) (tcp|udp)/(\d{1,5})").fullmatch


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


def _ipv4(text: str) -> int | None:
    """A dotted quad as an int, or None for anything else (the caller then asks
    :mod:`ipaddress`, which also says what is wrong). ``inet_pton`` is as strict as
    ipaddress: four decimal octets, no leading zeros."""
    try:
        return _U32(socket.inet_pton(socket.AF_INET, text))[0]
    except (OSError, UnicodeError, ValueError):
        return None


def _net(text: str, what: str, spec: str, help_: str) -> tuple[int, int]:
    """``(address, prefix length)`` of an IPv4 address, CIDR or ``any``: plain forms on a
    fast path without :mod:`ipaddress` objects (a batch load parses 100,000 edges), every
    other form and every error through :func:`_network`."""
    if text == "any":
        return 0, 0
    addr_text, slash, plen_text = text.partition("/")
    addr = _ipv4(addr_text)
    if addr is not None:
        if not slash:
            return addr, 32
        if plen_text.isascii() and plen_text.isdigit() and len(plen_text) <= 2:
            plen = int(plen_text)
            if plen <= 32 and not addr & (0xFFFFFFFF >> plen):
                return addr, plen
    net = _network(text, what, spec, help_)
    return int(net.network_address), net.prefixlen


class Edge(NamedTuple):
    """One allowed ingress edge: the source network (``src_addr``/``src_len``; /0 = any)
    to ``dst_addr`` (0 = any of the node's addresses), protocol number and destination
    port (0 for icmp). A tuple of plain ints: the batch path makes 100,000 of them."""

    src_addr: int
    src_len: int
    dst_addr: int
    proto: int
    port: int

    @classmethod
    def parse(cls, spec: str | Edge) -> Edge:
        if isinstance(spec, Edge):
            return spec
        if not isinstance(spec, str):
            raise EdgeSpecError(f"bad edge {spec!r}: expected a string — {EDGE_HELP}")
        if (m := _CANONICAL(spec)) is not None:  # the batch path: one match, two C calls
            src, plen_text, dst_text, proto_name, port_text = m.groups()
            addr = _ipv4(src)
            dst = 0 if dst_text == "any" else _ipv4(dst_text)
            plen = 32 if plen_text is None else int(plen_text)
            port = int(port_text)
            if (addr is not None and dst is not None and plen <= 32
                    and not addr & (0xFFFFFFFF >> plen) and 1 <= port <= 65535):
                return cls(addr, plen, dst, PROTOS[proto_name], port)
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
        src, plen = _net(src_text, "source", spec, EDGE_HELP)
        if parts[0] == "any":
            dst = 0
        else:
            dst, dst_len = _net(parts[0], "destination", spec, EDGE_HELP)
            if dst_len != 32:
                raise EdgeSpecError(f"bad destination {parts[0]!r} in {spec!r}: a single "
                                    f"address or 'any' (CIDR only on the source side) — "
                                    f"{EDGE_HELP}")
        proto, port = _proto_port(parts[1], spec, EDGE_HELP, port_required=True)
        return cls(src, plen, dst, proto, port)

    @property
    def src(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network((self.src_addr, self.src_len))

    @property
    def dst(self) -> ipaddress.IPv4Address | None:
        return ipaddress.IPv4Address(self.dst_addr) if self.dst_addr else None

    @property
    def kind(self) -> layout.EdgeKind:
        k = layout.EdgeKind
        if self.src_len == 32:
            return k.SRC_DST if self.dst_addr else k.SRC_ANYDST
        if self.src_len == 0:
            return k.ANY_DST if self.dst_addr else k.ANY_ANYDST
        return k.CIDR_DST if self.dst_addr else k.CIDR_ANYDST

    @property
    def in_lpm(self) -> bool:
        return 0 < self.src_len < 32

    def key(self) -> bytes:
        if self.in_lpm:
            return (layout.EDGE_LPM_KEY.pack(layout.EDGE_LPM_EXACT_BITS + self.src_len)
                    + layout.EDGE_LPM_DATA.pack(self.proto, self.port, self.dst_addr,
                                                self.src_addr))
        return layout.EDGE_KEY.pack(self.src_addr, self.dst_addr, self.port, self.proto)

    @classmethod
    def from_key(cls, raw: bytes, lpm: bool) -> Edge:
        if lpm:
            (plen,) = layout.EDGE_LPM_KEY.unpack(raw[:4])
            proto, port, dst, src = layout.EDGE_LPM_DATA.unpack(raw[4:])
            return cls(src, plen - layout.EDGE_LPM_EXACT_BITS, dst, proto, port)
        src, dst, port, proto = layout.EDGE_KEY.unpack(raw)
        return cls(src, 32 if src else 0, dst, proto, port)

    def __str__(self) -> str:
        src = "any" if self.src_len == 0 else (
            str(ipaddress.IPv4Address(self.src_addr)) if self.src_len == 32 else str(self.src))
        dst = str(ipaddress.IPv4Address(self.dst_addr)) if self.dst_addr else "any"
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

    def net_key(self) -> bytes:
        """The key of the peer's network alone (seg_mgmt_nets: the one-lookup pre-check)."""
        return (layout.MGMT_NET_KEY.pack(self.net.prefixlen)
                + layout.MGMT_NET_DATA.pack(int(self.net.network_address)))

    def __str__(self) -> str:
        net = str(self.net.network_address) if self.net.prefixlen == 32 else str(self.net)
        if not self.proto:
            return net
        name = PROTO_NAMES.get(self.proto, str(self.proto))
        return f"{net} {name}" if not self.port else f"{net} {name}/{self.port}"
