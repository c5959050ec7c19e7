"""Kernel records become the same protocol events as before the BPF reshape: raw ring
records packed with the shared layouts, decoded, then converted (no kernel needed)."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import socket

import pytest

from aegis_agent.bpf import layout
from aegis_agent.bpf.layout import ConnectRecord, DropRecord, ExecRecord
from aegis_agent.events import from_record

pytestmark = pytest.mark.unit

OFFSET = 1_000_000


def test_segment_drop_record_becomes_a_drop_event() -> None:
    raw = layout.SEG_EVENT.pack(5, ipaddress.IPv4Address("192.0.2.1").packed,
                                ipaddress.IPv4Address("192.0.2.2").packed,
                                (40000).to_bytes(2, "big"), (22).to_bytes(2, "big"), 6,
                                layout.Verdict.DROP_NO_EDGE, 0, 0, 3, 0x0800, 60, 0)
    ev = from_record(DropRecord.unpack(raw), OFFSET)
    assert (ev.ts_ns, ev.kind, ev.severity) == (OFFSET + 5, "drop", "notice")
    assert ev.data == {"src": "192.0.2.1", "dst": "192.0.2.2", "sport": 40000, "dport": 22,
                       "proto": "tcp", "verdict": "drop_no_edge", "direction": "ingress",
                       "observed": False, "ifindex": 3}
    observed = layout.SEG_EVENT.pack(5, bytes(4), bytes(4), bytes(2), bytes(2), 17,
                                     layout.Verdict.DROP_IDLE, 1, 1, 3, 0x0800, 60, 0)
    ev = from_record(DropRecord.unpack(observed), OFFSET)
    assert ev.severity == "info" and ev.data["observed"] is True
    assert (ev.data["direction"], ev.data["proto"]) == ("egress", "udp")
    assert "policy" not in ev.data
    # a label policy's would-be drop names the policy
    record = dataclasses.replace(DropRecord.unpack(layout.SEG_EVENT.pack(
        5, bytes(4), bytes(4), bytes(2), bytes(2), 6, layout.Verdict.DROP_POLICY, 0, 1, 3,
        0x0800, 60, 4)), policy="web-db")
    ev = from_record(record, OFFSET)
    assert (ev.data["verdict"], ev.data["observed"], ev.data["policy"]) == (
        "drop_policy", True, "web-db")


@pytest.mark.parametrize(("flags", "kind", "severity", "extra"), [
    (0, "exec", "info", {}),
    (layout.EXEC_DENIED, "exec_denied", "warning", {"enforced_by": "sigkill"}),
    (layout.EXEC_DENIED | layout.EXEC_LSM, "exec_denied", "warning", {"enforced_by": "lsm"}),
    (layout.EXEC_INTERP, "exec", "info", {"interpreted": True}),
    (layout.EXEC_DENIED | layout.EXEC_INTERP, "exec_denied", "warning",
     {"enforced_by": "sigkill", "interpreted": True}),
])
def test_exec_record_becomes_an_exec_event(flags: int, kind: str, severity: str,
                                           extra: dict) -> None:
    dev = os.makedev(8, 1)
    raw = layout.EXEC_EVENT.pack(7, 1234, layout.kernel_dev(dev), 100, 1, 0, 0, flags, 0, 0,
                                 b"touch", b"/usr/bin/touch")
    ev = from_record(ExecRecord.unpack(raw), OFFSET)
    assert (ev.ts_ns, ev.kind, ev.severity) == (OFFSET + 7, kind, severity)
    assert ev.data == {"pid": 100, "ppid": 1, "uid": 0, "gid": 0, "comm": "touch",
                       "filename": "/usr/bin/touch", "ino": 1234, "dev": dev, **extra}


def test_an_exec_record_names_the_ssh_sessions_above_it() -> None:
    raw = layout.EXEC_EVENT.pack(7, 1234, 0, 100, 1, 0, 0, 0, 42, 7, b"id", b"/usr/bin/id")
    ev = from_record(ExecRecord.unpack(raw), OFFSET)
    assert (ev.data["ssh_pid"], ev.data["ssh_pid_outer"]) == (42, 7)
    assert "args" not in ev.data
    # inside a session the kernel appends the argv (NUL-separated, zero padded)
    with_args = raw + b"ls\0-l\0/tmp\0".ljust(layout.EXEC_ARGS_LEN, b"\0")
    ev = from_record(ExecRecord.unpack(with_args), OFFSET)
    assert ev.data["args"] == "ls -l /tmp" and ev.data["filename"] == "/usr/bin/id"


def test_connect_record_becomes_a_connect_event() -> None:
    mapped = b"\0" * 10 + b"\xff\xff" + bytes([127, 0, 0, 1])
    raw = layout.CONNECT_EVENT.pack(9, 77, 100, 0, socket.AF_INET, 6, 443, 0, mapped,
                                    b"curl")
    ev = from_record(ConnectRecord.unpack(raw), OFFSET)
    assert (ev.ts_ns, ev.kind, ev.severity) == (OFFSET + 9, "connect", "info")
    assert ev.data == {"pid": 100, "uid": 0, "comm": "curl", "family": "inet",
                       "proto": "tcp", "daddr": "127.0.0.1", "dport": 443, "cgroup_id": 77}
    v6 = layout.CONNECT_EVENT.pack(9, 77, 100, 0, socket.AF_INET6, 17, 53,
                                   layout.CONNECT_DENIED,
                                   ipaddress.IPv6Address("2001:db8::1").packed, b"dig")
    ev = from_record(ConnectRecord.unpack(v6), OFFSET)
    assert (ev.kind, ev.severity) == ("connect_denied", "warning")
    assert (ev.data["family"], ev.data["proto"], ev.data["daddr"]) == ("inet6", "udp",
                                                                        "2001:db8::1")


def test_a_kernel_u64_above_int64_travels_as_its_decimal_string() -> None:
    from aegis_agent.events import u64
    from aegis_agent.policy import _event_int
    from aegis_protocol.events import Event

    big = 2**64 - 5
    ev = Event(ts_ns=1, kind="exec", data={"ino": u64(big), "dev": 3})
    assert ev.data["ino"] == str(big) and _event_int(ev, "ino") == big
    assert u64(42) == 42
