"""Binary layouts of segment.bpf.c's maps and events, defined once for the loader.

Addresses and ports are kept in network byte order, as the kernel reads them off the
wire; the loader checks each map's key and value size against these at open time.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum


class Verdict(IntEnum):
    PASS_EDGE = 0
    PASS_FLOW = 1
    PASS_MGMT = 2
    PASS_ARP = 3
    PASS_IPV6 = 4
    PASS_EGRESS = 5
    DROP_NO_EDGE = 6
    DROP_EXPIRED = 7
    DROP_IDLE = 8
    DROP_QUARANTINE = 9
    DROP_ARP = 10
    DROP_IPV6 = 11
    DROP_MALFORMED = 12
    DROP_FRAGMENT = 13
    DROP_OTHER_L3 = 14

    @property
    def is_drop(self) -> bool:
        return self >= Verdict.DROP_NO_EDGE

    @property
    def label(self) -> str:
        return self.name.lower()


class EdgeKind(IntEnum):
    SRC_DST = 1 << 0
    ANY_DST = 1 << 1
    SRC_ANYDST = 1 << 2
    ANY_ANYDST = 1 << 3
    CIDR_DST = 1 << 4
    CIDR_ANYDST = 1 << 5


MODES = {"enforce": 0, "observe": 1}
ARP_POLICIES = {"allow": 0, "deny": 1}
IPV6_POLICIES = {"deny": 0, "allow": 1, "filter": 2}
DIRECTIONS = ("ingress", "egress")

SLOT_DIR = 64
SLOT_OBSERVED = 32
SLOT_EVENTS = {"sent": 128, "suppressed": 129, "lost": 130}
N_SLOTS = 136

# struct config
CONFIG = struct.Struct("<IIIIII QQQ")
# struct edge_key: src, dst (be32), dport (be16), proto, pad
EDGE_KEY = struct.Struct("!IIHBx")
# struct edge_val
EDGE_VAL = struct.Struct("<QQQQ")
# struct edge_lpm_key: prefixlen (host order), then proto, pad, dport, dst, src (wire order)
EDGE_LPM_KEY = struct.Struct("<I")
EDGE_LPM_DATA = struct.Struct("!BxHII")
EDGE_LPM_EXACT_BITS = 64  # proto + pad + dport + dst
# struct mgmt_key: prefixlen, proto, pad, port, peer
MGMT_DATA = struct.Struct("!BxHI")
MGMT_EXACT_BITS = 32
# struct flow_key / flow_val
FLOW_KEY = struct.Struct("!IIHHB3x")
FLOW_VAL = struct.Struct("<QII")
# struct attach_state
ATTACH = struct.Struct("<IIIIII QQ")
# struct event
EVENT = struct.Struct("<Q 4s4s2s2s BBBB I HH")
# struct ratelimit: lock, pad, credit, last
RATELIMIT_SIZE = 24

MAP_SIZES: dict[str, tuple[int, int]] = {
    "seg_config": (4, CONFIG.size),
    "seg_edges": (EDGE_KEY.size, EDGE_VAL.size),
    "seg_edges_lpm": (EDGE_LPM_KEY.size + EDGE_LPM_DATA.size, EDGE_VAL.size),
    "seg_mgmt": (EDGE_LPM_KEY.size + MGMT_DATA.size, 4),
    "seg_flows": (FLOW_KEY.size, FLOW_VAL.size),
    "seg_counters": (4, 8),
    "seg_events": (0, 0),
    "seg_ratelimit": (4, RATELIMIT_SIZE),
    "seg_attach": (4, ATTACH.size),
}

XDP_MODES = {0: "none", 1: "native", 2: "generic"}
TC_MODES = {0: "none", 1: "tcx", 2: "clsact"}


@dataclass
class Config:
    mode: int = 0
    quarantine: int = 0
    arp: int = 0
    ipv6: int = 0
    edge_kinds: int = 0
    flow_timeout_ns: int = 300 * 10**9
    event_cost_ns: int = 10**6
    event_burst_ns: int = 100 * 10**6

    def pack(self) -> bytes:
        return CONFIG.pack(self.mode, self.quarantine, self.arp, self.ipv6, self.edge_kinds,
                           0, self.flow_timeout_ns, self.event_cost_ns, self.event_burst_ns)

    @classmethod
    def unpack(cls, raw: bytes) -> Config:
        m, q, a, v6, k, _, ft, cost, burst = CONFIG.unpack(raw[:CONFIG.size])
        return cls(m, q, a, v6, k, ft, cost, burst)


@dataclass
class AttachState:
    ifindex: int = 0
    xdp_mode: int = 0
    tc_mode: int = 0
    tc_handle: int = 0
    tc_priority: int = 0
    tc_hook_created: int = 0
    attached_ns: int = 0
    netns_ino: int = 0

    def pack(self) -> bytes:
        return ATTACH.pack(self.ifindex, self.xdp_mode, self.tc_mode, self.tc_handle,
                           self.tc_priority, self.tc_hook_created, self.attached_ns,
                           self.netns_ino)

    @classmethod
    def unpack(cls, raw: bytes) -> AttachState:
        return cls(*ATTACH.unpack(raw[:ATTACH.size]))
