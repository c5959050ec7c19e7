"""Kernel records (segment drops, execs, connects) as protocol events: the one place the
BPF side meets the wire format.

    offset = wall_offset_ns()               # once per process
    event = from_record(record, offset)     # DropRecord | ExecRecord | ConnectRecord
    events = ExecDecoder(offset, ids).events(batch)   # the agent's exec hot path

Kernel timestamps are CLOCK_MONOTONIC (bpf_ktime_get_ns); ``offset`` moves them to
wall-clock ns.
"""

from __future__ import annotations

import hashlib
import socket
import time
import uuid
from pathlib import Path

from aegis_protocol.events import INT64_MAX, Event

from .bpf.layout import (
    EXEC_DENIED,
    EXEC_EVENT,
    EXEC_EVENT_V1_SIZE,
    EXEC_INTERP,
    EXEC_LSM,
    ConnectRecord,
    DropRecord,
    ExecRecord,
    exec_args,
    exec_raw_current,
    user_dev,
)

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
                       "ifindex": d.ifindex,
                       **({"policy": d.policy} if d.policy else {})})


def exec_event(r: ExecRecord, offset_ns: int) -> Event:
    return Event(
        ts_ns=r.ktime_ns + offset_ns,
        kind="exec_denied" if r.denied else "exec",
        severity="warning" if r.denied else "info",
        data={"pid": r.pid, "ppid": r.ppid, "uid": r.uid, "gid": r.gid, "comm": r.comm,
              "filename": r.filename, "ino": u64(r.ino), "dev": r.dev,
              **({"enforced_by": r.enforced_by} if r.denied else {}),
              **({"interpreted": True} if r.interpreted else {}),
              **({"ssh_pid": r.ssh_pid} if r.ssh_pid else {}),
              **({"ssh_pid_outer": r.ssh_pid_outer} if r.ssh_pid_outer else {}),
              **({"args": r.args} if r.args is not None else {})})


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


class RingIds:
    """Event ids for ring records: the record's position in its ring, under a prefix of
    the boot and the ring map's id, so a record read twice (an agent killed after its
    spool fsync, before it released the ring slot) gets the same id both times and the
    controller, which keys events on (node, id), stores it once. A UUIDv4 in form."""

    def __init__(self, map_id: int, boot_id: str | None = None) -> None:
        boot = boot_id if boot_id is not None else Path(
            "/proc/sys/kernel/random/boot_id").read_text().strip()
        high = int.from_bytes(hashlib.blake2b(
            f"aegis-ring:{boot}:{map_id}".encode(), digest_size=8).digest(), "big")
        self._prefix = ((high & ~0xF000) | 0x4000) << 64  # version 4 (uuid.UUID(version=4))

    def __call__(self, pos: int) -> uuid.UUID:
        # the RFC 4122 variant in the top bits of the position (ring positions stay far
        # below 2**62); set as uuid.UUID.__init__ sets it, without its argument checks
        u = object.__new__(uuid.UUID)
        setattr_(u, "int", self._prefix | (pos & _LOW62) | _VARIANT)
        setattr_(u, "is_safe", uuid.SafeUUID.unknown)
        return u


_LOW62 = (1 << 62) - 1
_VARIANT = 1 << 63
setattr_ = object.__setattr__
_EVENT_FIELDS = frozenset(Event.model_fields)


def trusted_event(values: dict[str, object]) -> Event:
    """An Event from ``values`` (every field given) without validating them: what
    ``Event.model_construct`` does, without its per-field loop. Only for values that are
    valid by construction (decoded from a fixed kernel layout);
    tests/unit/test_agent_hot_path.py checks it gives the validated event."""
    ev = object.__new__(Event)
    setattr_(ev, "__dict__", values)
    setattr_(ev, "__pydantic_fields_set__", set(_EVENT_FIELDS))
    setattr_(ev, "__pydantic_extra__", None)
    setattr_(ev, "__pydantic_private__", None)
    return ev


class ExecDecoder:
    """Raw ``exec_event`` records straight to protocol events: one precompiled struct
    unpack per record, no intermediate ``ExecRecord``, and the event built without
    re-validating (every field comes from a fixed-size kernel struct: u32s, a u64 inode
    sent as ``u64`` does, 16- and 256-byte strings, all within the event model's bounds).
    Same fields as :func:`exec_event`."""

    def __init__(self, offset_ns: int, ids: RingIds) -> None:
        self.offset_ns = offset_ns
        self.ids = ids
        self._devs: dict[int, int] = {}

    def events(self, batch: list[tuple[int, bytes]]) -> list[Event]:
        unpack, ids, offset = EXEC_EVENT.unpack_from, self.ids, self.offset_ns
        size = EXEC_EVENT.size
        devs = self._devs
        out = []
        for pos, record in batch:
            (ktime, ino, kdev, pid, ppid, uid, gid, flags, ssh_pid, ssh_outer, comm,
             filename) = unpack(record if len(record) != EXEC_EVENT_V1_SIZE
                                else exec_raw_current(record))
            dev = devs.get(kdev)
            if dev is None:
                dev = devs[kdev] = user_dev(kdev)
            data = {"pid": pid, "ppid": ppid, "uid": uid, "gid": gid,
                    "comm": comm.split(b"\0", 1)[0].decode(errors="replace"),
                    "filename": filename.split(b"\0", 1)[0].decode(errors="replace"),
                    "ino": ino if ino <= INT64_MAX else str(ino), "dev": dev}
            if flags & EXEC_DENIED:
                data["enforced_by"] = "lsm" if flags & EXEC_LSM else "sigkill"
                kind, severity = "exec_denied", "warning"
            else:
                kind, severity = "exec", "info"
            if flags & EXEC_INTERP:
                data["interpreted"] = True
            if ssh_pid:
                data["ssh_pid"] = ssh_pid
                if ssh_outer:
                    data["ssh_pid_outer"] = ssh_outer
                if len(record) > size:
                    data["args"] = exec_args(record)
            out.append(trusted_event({"id": ids(pos), "ts_ns": ktime + offset, "kind": kind,
                                      "severity": severity, "data": data}))
        return out
