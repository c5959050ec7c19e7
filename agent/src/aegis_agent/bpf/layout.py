"""Every kernel struct, map name and program name the loader shares with bpf/*.bpf.c.

The C side declares the same structs once in ``bpf/segment.h``, ``bpf/exec.h``,
``bpf/connect.h`` and ``bpf/scope.h``. Each Python mirror here is a :class:`CStruct`
that names its fields, so ``tests/unit/test_bpf_layout.py`` compiles a file of
``sizeof``/``offsetof`` assertions from them (and of the ``#define``s mirrored here, such
as counter slots and ``LAST_SEEN_GRANULARITY_NS``) against those headers: a drift fails the
build of that test, not a node. Map names and sizes are declared per object
(``SEGMENT_MAPS``, ``EXEC_MAPS``, ``CONNECT_MAPS``) and checked against the pinned maps
whenever they are re-opened (``pinned.PinnedObject.open``).

Addresses and ports of the segment filter are kept in network byte order, as the kernel
reads them off the wire. Decoded ring records (``DropRecord``, ``ExecRecord``,
``ConnectRecord``) are plain data: turning them into protocol events is the agent's job
(``aegis_agent.events``), not this package's.
"""

from __future__ import annotations

import ipaddress
import os
import struct
from dataclasses import dataclass
from enum import IntEnum

from ..args_redaction import redact


class CStruct(struct.Struct):
    """A ``struct.Struct`` built from named fields of one C struct (``c_name``).

    ``fields``: (name, format) pairs in order; a name starting with ``_`` is padding
    (still checked). ``at``: the offset of the first field inside the C struct, for a
    mirror that covers only part of it (``whole=False``: sizeof is not compared)."""

    def __init__(self, c_name: str, order: str, fields: list[tuple[str, str]], *,
                 at: int = 0, whole: bool = True) -> None:
        super().__init__(order + "".join(f for _, f in fields))
        self.c_name = c_name
        self.fields = fields
        self.at = at
        self.whole = whole

    def offsets(self) -> dict[str, int]:
        """Each field's offset in the C struct (what ``offsetof`` must say)."""
        out, prefix = {}, self.format[0]
        for i, (name, _) in enumerate(self.fields):
            out[name] = self.at + struct.calcsize(prefix + "".join(f for _, f in
                                                                   self.fields[:i]))
        return out


# -- names (C identifiers) -----------------------------------------------------------------
MAP_SEG_CONFIG = "seg_config"
MAP_SEG_EDGES = "seg_edges"
MAP_SEG_EDGES_LPM = "seg_edges_lpm"
MAP_SEG_MGMT = "seg_mgmt"
MAP_SEG_MGMT_NETS = "seg_mgmt_nets"
MAP_SEG_FLOWS = "seg_flows"
MAP_SEG_COUNTERS = "seg_counters"
MAP_SEG_EVENTS = "seg_events"
MAP_SEG_RATELIMIT = "seg_ratelimit"
MAP_SEG_ATTACH = "seg_attach"
MAP_SEG_POL_EDGES = "seg_pol_edges"
MAP_SEG_POLICIES = "seg_policies"
MAP_SEG_POL_COUNTERS = "seg_pol_counters"
MAP_SEG_FQDN = "seg_fqdn"
MAP_SEG_FQDN_RULES = "seg_fqdn_rules"
MAP_SEG_DNS = "seg_dns"
PROG_SEG_INGRESS = "seg_ingress"
PROG_SEG_EGRESS = "seg_egress"

MAP_EXEC_EVENTS = "exec_events"
MAP_EXEC_DENY = "exec_deny"
MAP_EXEC_STATS = "exec_stats"
MAP_EXEC_SCOPE = "exec_scope"
PROG_EXEC_TRACE = "exec_trace"
PROG_EXEC_LSM = "exec_lsm"

MAP_CONNECT_EVENTS = "connect_events"
MAP_CONNECT_MGMT = "connect_mgmt"
MAP_CONNECT_STATS = "connect_stats"
MAP_CONNECT_SCOPE = "connect_scope"
PROG_CONNECT_TRACE = "connect_trace"
PROG_CONNECT4 = "connect4"
PROG_CONNECT6 = "connect6"

PROG_EMPTY_XDP = "empty_xdp"

# enum bpf_map_type (uapi; stable numbers)
MAP_HASH, MAP_ARRAY, MAP_PERCPU_ARRAY, MAP_LRU_HASH, MAP_LPM_TRIE, MAP_RINGBUF = (
    1, 2, 6, 9, 11, 27)


@dataclass(frozen=True)
class MapSpec:
    """What a map must be: key and value size, and its type and max_entries."""

    key_size: int
    value_size: int
    type: int | None = None
    max_entries: int | None = None


# -- segment.h ---------------------------------------------------------------------------
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
    DROP_POLICY = 15
    DROP_EGRESS = 16

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
PROTOS = {"tcp": 6, "udp": 17, "icmp": 1}
PROTO_NAMES = {v: k for k, v in PROTOS.items()}

SLOT_DIR = 64
SLOT_OBSERVED = 32
SLOT_EVENTS = {"sent": 128, "suppressed": 129, "lost": 130}
SLOT_FLOW_CACHE_HIT = 131
SLOT_DNS = {"sent": 132, "lost": 133}
N_SLOTS = 136
#: An edge's last_seen is rewritten only when it is at least this old.
LAST_SEEN_GRANULARITY_NS = 1_000_000

CONFIG = CStruct("config", "<", [
    ("mode", "I"), ("quarantine", "I"), ("arp", "I"), ("ipv6", "I"), ("edge_kinds", "I"),
    ("flags", "I"), ("flow_timeout_ns", "Q"), ("event_cost_ns", "Q"), ("event_burst_ns", "Q")])
CFG_NO_FLOW_CACHE = 1 << 0  # config.flags (older builds kept 0 there: padding)
CFG_POLICY = 1 << 1  # label policies installed
CFG_EGRESS = 1 << 2  # egress restricted (FQDN policy): new flows to seg_fqdn / mgmt only
CFG_EGRESS_OBSERVE = 1 << 3  # ... in observe mode
CFG_DNS_LEARN = 1 << 4  # DNS answers copied to seg_dns
#: the config flags the controller's policies own (kept by a revert, see SegmentFilter.restore)
CFG_POLICY_FLAGS = CFG_POLICY | CFG_EGRESS | CFG_EGRESS_OBSERVE | CFG_DNS_LEARN
FQDN_KEY = CStruct("fqdn_key", "!", [("dst", "I"), ("dport", "H"), ("proto", "B"),
                                     ("_pad", "x")])
FQDN_RESOLVER, FQDN_LEARNED = 1, 2  # enum fqdn_flags
FQDN_VAL = CStruct("fqdn_val", "<", [("expires_ns", "Q"), ("policy", "H"), ("flags", "B"),
                                     ("_pad", "x"), ("rule", "I")])
FQDN_PATTERN_LEN = 256
FQDN_MAX_RULES = 1024  # seg_fqdn_rules (index 0 unused)
FQDN_MAX_ENTRIES = 65536
FQDN_RULE = CStruct("fqdn_rule", "<", [("policy", "H"), ("dport", "2s"), ("proto", "B"),
                                       ("_pad", "3x"), ("pattern", f"{FQDN_PATTERN_LEN}s")])
DNS_CAPTURE_MAX = 1232
DNS_REC = CStruct("dns_rec", "<", [("ts_ns", "Q"), ("server", "4s"), ("client", "4s"),
                                   ("len", "H"), ("orig_len", "H"), ("ifindex", "I"),
                                   ("data", f"{DNS_CAPTURE_MAX}s")])
POL_ACTIONS = {"allow": 0, "drop": 1, "log": 2}  # enum pol_action
POL_VAL = CStruct("pol_val", "<", [
    ("counter", "I"), ("policy", "H"), ("action", "B"), ("_pad", "x")])
POL_NAME_LEN = 56
POL_POLICY = CStruct("pol_policy", "<", [("mode", "I"), ("_pad", "4x"),
                                         ("name", f"{POL_NAME_LEN}s")])
POL_COUNTERS = CStruct("pol_counters", "<", [
    ("allowed_pkts", "Q"), ("allowed_bytes", "Q"), ("dropped_pkts", "Q"),
    ("dropped_bytes", "Q"), ("observed_pkts", "Q"), ("observed_bytes", "Q")])
POL_MAX_POLICIES = 1024  # seg_policies (index 0 unused)
POL_MAX_COUNTERS = 16384  # seg_pol_counters (index 0 unused)
EDGE_KEY = CStruct("edge_key", "!", [
    ("src", "I"), ("dst", "I"), ("dport", "H"), ("proto", "B"), ("_pad", "x")])
EDGE_VAL = CStruct("edge_val", "<", [
    ("expires_ns", "Q"), ("idle_ns", "Q"), ("last_seen_ns", "Q"), ("granted_ns", "Q")])
# struct edge_lpm_key: prefixlen in host order, then the data in wire order
EDGE_LPM_KEY = CStruct("edge_lpm_key", "<", [("prefixlen", "I")], whole=False)
EDGE_LPM_DATA = CStruct("edge_lpm_key", "!", [
    ("proto", "B"), ("_pad", "x"), ("dport", "H"), ("dst", "I"), ("src", "I")], at=4)
EDGE_LPM_EXACT_BITS = 64  # proto + pad + dport + dst
# struct mgmt_key: prefixlen (host order, shares EDGE_LPM_KEY's shape), then wire order
MGMT_KEY = CStruct("mgmt_key", "<", [("prefixlen", "I")], whole=False)
MGMT_DATA = CStruct("mgmt_key", "!", [
    ("proto", "B"), ("_pad", "x"), ("port", "H"), ("peer", "I")], at=4)
MGMT_EXACT_BITS = 32
# struct mgmt_net_key: prefixlen in host order, the peer's network in wire order
MGMT_NET_KEY = CStruct("mgmt_net_key", "<", [("prefixlen", "I")], whole=False)
MGMT_NET_DATA = CStruct("mgmt_net_key", "!", [("peer", "I")], at=4)
FLOW_KEY = CStruct("flow_key", "!", [
    ("remote", "I"), ("local", "I"), ("rport", "H"), ("lport", "H"), ("proto", "B"),
    ("_pad", "3x")])
FLOW_VAL = CStruct("flow_val", "<", [("last_seen_ns", "Q"), ("outbound", "I"), ("kind", "I")])
ATTACH = CStruct("attach_state", "<", [
    ("ifindex", "I"), ("xdp_mode", "I"), ("tc_mode", "I"), ("tc_handle", "I"),
    ("tc_priority", "I"), ("tc_hook_created", "I"), ("attached_ns", "Q"), ("netns_ino", "Q")])
SEG_EVENT = CStruct("seg_event", "<", [
    ("ts_ns", "Q"), ("src", "4s"), ("dst", "4s"), ("sport", "2s"), ("dport", "2s"),
    ("proto", "B"), ("verdict", "B"), ("direction", "B"), ("observed", "B"),
    ("ifindex", "I"), ("l3_proto", "H"), ("pkt_len", "H"), ("policy", "I"), ("_pad", "4x")])
RATELIMIT = CStruct("ratelimit", "<", [
    ("lock", "I"), ("_pad", "I"), ("credit_ns", "Q"), ("last_ns", "Q")])

SEGMENT_MAPS: dict[str, MapSpec] = {
    MAP_SEG_CONFIG: MapSpec(4, CONFIG.size, MAP_ARRAY, 1),
    MAP_SEG_EDGES: MapSpec(EDGE_KEY.size, EDGE_VAL.size, MAP_HASH, 262144),
    MAP_SEG_EDGES_LPM: MapSpec(EDGE_LPM_KEY.size + EDGE_LPM_DATA.size, EDGE_VAL.size,
                               MAP_LPM_TRIE, 65536),
    MAP_SEG_MGMT: MapSpec(MGMT_KEY.size + MGMT_DATA.size, 4, MAP_LPM_TRIE, 1024),
    MAP_SEG_MGMT_NETS: MapSpec(MGMT_NET_KEY.size + MGMT_NET_DATA.size, 4, MAP_LPM_TRIE, 1024),
    MAP_SEG_FLOWS: MapSpec(FLOW_KEY.size, FLOW_VAL.size, MAP_LRU_HASH, 65536),
    MAP_SEG_COUNTERS: MapSpec(4, 8, MAP_PERCPU_ARRAY, N_SLOTS),
    MAP_SEG_EVENTS: MapSpec(0, 0, MAP_RINGBUF, 256 * 1024),
    MAP_SEG_RATELIMIT: MapSpec(4, RATELIMIT.size, MAP_ARRAY, 1),
    MAP_SEG_ATTACH: MapSpec(4, ATTACH.size, MAP_ARRAY, 1),
    MAP_SEG_POL_EDGES: MapSpec(EDGE_KEY.size, POL_VAL.size, MAP_HASH, 65536),
    MAP_SEG_POLICIES: MapSpec(4, POL_POLICY.size, MAP_ARRAY, POL_MAX_POLICIES),
    MAP_SEG_POL_COUNTERS: MapSpec(4, POL_COUNTERS.size, MAP_PERCPU_ARRAY, POL_MAX_COUNTERS),
    MAP_SEG_FQDN: MapSpec(FQDN_KEY.size, FQDN_VAL.size, MAP_HASH, FQDN_MAX_ENTRIES),
    MAP_SEG_FQDN_RULES: MapSpec(4, FQDN_RULE.size, MAP_ARRAY, FQDN_MAX_RULES),
    MAP_SEG_DNS: MapSpec(0, 0, MAP_RINGBUF, 256 * 1024),
}
SEGMENT_PROGRAMS = (PROG_SEG_INGRESS, PROG_SEG_EGRESS)

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
    flags: int = 0

    def pack(self) -> bytes:
        return CONFIG.pack(self.mode, self.quarantine, self.arp, self.ipv6, self.edge_kinds,
                           self.flags, self.flow_timeout_ns, self.event_cost_ns,
                           self.event_burst_ns)

    @classmethod
    def unpack(cls, raw: bytes) -> Config:
        m, q, a, v6, k, flags, ft, cost, burst = CONFIG.unpack(raw[:CONFIG.size])
        return cls(m, q, a, v6, k, ft, cost, burst, flags)


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


@dataclass(frozen=True)
class DropRecord:
    """A segment drop (or observe-mode would-be drop) from ``seg_events``; ``ts_ns`` is
    CLOCK_MONOTONIC."""

    ts_ns: int
    src: ipaddress.IPv4Address
    dst: ipaddress.IPv4Address
    sport: int
    dport: int
    proto: str
    verdict: str  # e.g. drop_no_edge
    direction: str  # ingress | egress
    observed: bool  # observe mode: passed, but enforce would have dropped it
    ifindex: int
    l3_proto: int
    length: int
    policy_index: int = 0  # the label policy that decided (seg_policies), 0: none
    policy: str | None = None  # its name (SegmentFilter.decode looks it up)

    @classmethod
    def unpack(cls, raw: bytes) -> DropRecord:
        (ts, src, dst, sport, dport, proto, verdict, direction, observed, ifindex, l3,
         length, policy) = SEG_EVENT.unpack(raw[:SEG_EVENT.size])
        return cls(ts, ipaddress.IPv4Address(src), ipaddress.IPv4Address(dst),
                   int.from_bytes(sport, "big"), int.from_bytes(dport, "big"),
                   PROTO_NAMES.get(proto, str(proto)), Verdict(verdict).label,
                   DIRECTIONS[direction], bool(observed), ifindex, l3, length, policy)


# -- common.h, scope.h ---------------------------------------------------------------------
MONITOR_STATS = ("events", "lost", "denied")  # enum aegis_stat
SCOPE = CStruct("aegis_scope", "<", [("dev", "Q"), ("ino", "Q"), ("on", "I"), ("_pad", "I")])
U32 = struct.Struct("<I")


def monitor_maps(ring: str, ring_bytes: int, table: str, table_spec: MapSpec, stats: str,
                 scope: str) -> dict[str, MapSpec]:
    """A monitor's maps: its ring buffer first, its own table, then the stats map
    (common.h AEGIS_STATS_MAP) and the scope map (scope.h AEGIS_SCOPE_MAP)."""
    return {ring: MapSpec(0, 0, MAP_RINGBUF, ring_bytes), table: table_spec,
            stats: MapSpec(4, 8, MAP_PERCPU_ARRAY, len(MONITOR_STATS)),
            scope: MapSpec(4, SCOPE.size, MAP_ARRAY, 1)}


def kernel_dev(st_dev: int) -> int:
    """A stat() device number in the kernel's internal encoding (major << 20 | minor)."""
    return (os.major(st_dev) << 20) | os.minor(st_dev)


def user_dev(kdev: int) -> int:
    """The inverse of :func:`kernel_dev`: a device number as stat() reports it."""
    return os.makedev(kdev >> 20, kdev & 0xFFFFF)


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace")


# -- exec.h --------------------------------------------------------------------------------
EXEC_DENIED, EXEC_LSM, EXEC_INTERP = 1, 2, 4
EXEC_KEY = CStruct("exec_key", "<", [("dev", "Q"), ("ino", "Q")])
EXEC_EVENT = CStruct("exec_event", "<", [
    ("ktime_ns", "Q"), ("ino", "Q"), ("dev", "Q"), ("pid", "I"), ("ppid", "I"), ("uid", "I"),
    ("gid", "I"), ("flags", "I"), ("ssh_pid", "I"), ("ssh_pid_outer", "I"), ("_pad", "4x"),
    ("comm", "16s"), ("filename", "256s")])
#: An exec inside an sshd session: the record followed by the start of its argv.
EXEC_ARGS_LEN = 256
EXEC_EVENT_ARGS = CStruct("exec_event_args", "<", [
    ("e", f"{EXEC_EVENT.size}s"), ("args", f"{EXEC_ARGS_LEN}s")])
#: The record before ssh_pid and ssh_pid_outer (what a pinned ring may still hold after
#: an upgrade): read as the current one with both 0.
EXEC_EVENT_V1_SIZE = 320


def exec_args(raw: bytes) -> str | None:
    """The argv of an ``exec_event_args`` record, its strings joined by spaces, with
    secrets masked (:mod:`aegis_agent.args_redaction`; None for a plain record; cut at
    EXEC_ARGS_LEN - 1 bytes)."""
    if len(raw) <= EXEC_EVENT.size:
        return None
    return redact(" ".join(a.decode(errors="replace")
                           for a in raw[EXEC_EVENT.size:].rstrip(b"\0").split(b"\0")))


def exec_raw_current(raw: bytes) -> bytes:
    """An ``exec_event`` record in the current layout (an older one widened)."""
    if len(raw) == EXEC_EVENT_V1_SIZE:
        return raw[:48] + bytes(8) + raw[48:]
    return raw


EXEC_MAPS = monitor_maps(MAP_EXEC_EVENTS, 1024 * 1024,
                         MAP_EXEC_DENY, MapSpec(EXEC_KEY.size, 4, MAP_HASH, 4096),
                         MAP_EXEC_STATS, MAP_EXEC_SCOPE)


@dataclass(frozen=True)
class ExecRecord:
    """One exec from ``exec_events``: ``ktime_ns`` is CLOCK_MONOTONIC, ``dev`` as stat()
    reports it, ``enforced_by`` set ("lsm" | "sigkill") when the exec was denied;
    ``interpreted``: an interpreter runs ``filename`` (a #! script), and ``ino``/``dev``
    are the interpreter's file (/bin/sh...), not the script's."""

    ktime_ns: int
    ino: int
    dev: int
    pid: int
    ppid: int
    uid: int
    gid: int
    comm: str
    filename: str
    denied: bool
    enforced_by: str | None
    interpreted: bool = False
    ssh_pid: int = 0
    ssh_pid_outer: int = 0
    args: str | None = None

    @classmethod
    def unpack(cls, raw: bytes) -> ExecRecord:
        (ktime, ino, kdev, pid, ppid, uid, gid, flags, ssh_pid, ssh_outer, comm,
         filename) = EXEC_EVENT.unpack_from(exec_raw_current(raw))
        denied = bool(flags & EXEC_DENIED)
        return cls(ktime, ino, user_dev(kdev), pid, ppid, uid, gid, _cstr(comm),
                   _cstr(filename), denied,
                   ("lsm" if flags & EXEC_LSM else "sigkill") if denied else None,
                   bool(flags & EXEC_INTERP), ssh_pid, ssh_outer, exec_args(raw))


# -- connect.h -----------------------------------------------------------------------------
CONNECT_DENIED = 1
CONNECT_EVENT = CStruct("connect_event", "<", [
    ("ktime_ns", "Q"), ("cgroup_id", "Q"), ("pid", "I"), ("uid", "I"), ("family", "I"),
    ("proto", "I"), ("dport", "I"), ("flags", "I"), ("daddr", "16s"), ("comm", "16s")])
CONNECT_MGMT_KEY = CStruct("connect_mgmt_key", "<", [("addr", "16s"), ("port", "I")])
CONNECT_MAPS = monitor_maps(MAP_CONNECT_EVENTS, 512 * 1024,
                            MAP_CONNECT_MGMT, MapSpec(CONNECT_MGMT_KEY.size, 4, MAP_HASH, 1024),
                            MAP_CONNECT_STATS, MAP_CONNECT_SCOPE)


@dataclass(frozen=True)
class ConnectRecord:
    """One outbound connect (or a refused one) from ``connect_events``."""

    ktime_ns: int
    cgroup_id: int
    pid: int
    uid: int
    family: int
    proto: int
    dport: int
    daddr: ipaddress.IPv4Address | ipaddress.IPv6Address  # IPv4-mapped shown as IPv4
    comm: str
    denied: bool

    @classmethod
    def unpack(cls, raw: bytes) -> ConnectRecord:
        (ktime, cgid, pid, uid, family, proto, dport, flags, daddr,
         comm) = CONNECT_EVENT.unpack_from(raw)
        addr = ipaddress.IPv6Address(daddr)
        return cls(ktime, cgid, pid, uid, family, proto, dport, addr.ipv4_mapped or addr,
                   _cstr(comm), bool(flags & CONNECT_DENIED))
