"""Kernel records (segment drops, execs, connects) as protocol events: the one place the
BPF side meets the wire format.

    offset = wall_offset_ns()               # once per process
    event = from_record(record, offset)     # DropRecord | ExecRecord | ConnectRecord

Kernel timestamps are CLOCK_MONOTONIC (bpf_ktime_get_ns); ``offset`` moves them to
wall-clock ns.
"""

from __future__ import annotations

import socket
import time

from aegis_protocol.events import INT64_MAX, Event

from .bpf.layout import ConnectRecord, DropRecord, ExecRecord

Record = DropRecord | ExecRecord | ConnectRecord


def wall_offset_ns() -> int:
    """Add to a CLOCK_MONOTONIC ns timestamp to get wall-clock ns."""
    return time.time_ns() - time.monotonic_ns()


def u64(value: int) -> int | str:
    """A kernel u64 (inode, cgroup id) for event data: the wire's integers are int64, so
    the rare value above it travels as its decimal string (the policy reads both)."""
    return value if value <= INT64_MAX else str(value)


def drop_event(d: DropRecord, offset_ns: int) -> Event:
    return Event(ts_ns=d.ts_ns + offset_ns, kind="drop",
                 severity="info" if d.observed else "notice",
                 data={"src": str(d.src), "dst": str(d.dst), "sport": d.sport,
                       "dport": d.dport, "proto": d.proto, "verdict": d.verdict,
                       "direction": d.direction, "observed": d.observed,
                       "ifindex": d.ifindex})


def exec_event(r: ExecRecord, offset_ns: int) -> Event:
    return Event(
        ts_ns=r.ktime_ns + offset_ns,
        kind="exec_denied" if r.denied else "exec",
        severity="warning" if r.denied else "info",
        data={"pid": r.pid, "ppid": r.ppid, "uid": r.uid, "gid": r.gid, "comm": r.comm,
              "filename": r.filename, "ino": u64(r.ino), "dev": r.dev,
              **({"enforced_by": r.enforced_by} if r.denied else {}),
              **({"interpreted": True} if r.interpreted else {})})


def connect_event(r: ConnectRecord, offset_ns: int) -> Event:
    return Event(
        ts_ns=r.ktime_ns + offset_ns,
        kind="connect_denied" if r.denied else "connect",
        severity="warning" if r.denied else "info",
        data={"pid": r.pid, "uid": r.uid, "comm": r.comm,
              "family": "inet6" if r.family == socket.AF_INET6 else "inet",
              "proto": {6: "tcp", 17: "udp"}.get(r.proto, str(r.proto)),
              "daddr": str(r.daddr), "dport": r.dport, "cgroup_id": u64(r.cgroup_id)})


def from_record(record: Record, offset_ns: int | None = None) -> Event:
    """The protocol event for any kernel record (``offset_ns``: see wall_offset_ns)."""
    offset = wall_offset_ns() if offset_ns is None else offset_ns
    if isinstance(record, DropRecord):
        return drop_event(record, offset)
    if isinstance(record, ExecRecord):
        return exec_event(record, offset)
    if isinstance(record, ConnectRecord):
        return connect_event(record, offset)
    raise TypeError(f"no event for a {type(record).__name__}")
