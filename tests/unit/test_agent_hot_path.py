"""The agent's per-event path (issue 16): ring records read in batches from the ring's
memory layout (a file laid out like it, no kernel needed), exec records decoded straight
to the same events as before, ids from ring positions, the policy's compiled rules."""

from __future__ import annotations

import mmap
import os
import struct
import uuid
from pathlib import Path

import pytest

from aegis_agent.bpf import layout
from aegis_agent.bpf.layout import ExecRecord
from aegis_agent.bpf.ring import RINGBUF_BUSY, RINGBUF_DISCARD, RingBatch
from aegis_agent.config import parse_config
from aegis_agent.events import ExecDecoder, RingIds, from_record
from aegis_agent.policy import Policy
from aegis_agent.spool import Spool
from aegis_protocol.events import Event

pytestmark = pytest.mark.unit

PAGE = mmap.PAGESIZE
RING = 4096  # bytes of ring data (a power of two)


class FakeRingFile:
    """A file with the ring map's layout: consumer page, producer page, data twice."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.ftruncate(self.fd, 2 * PAGE + 2 * RING)
        self.data = bytearray(RING)
        self.prod = 0

    def put(self, payload: bytes, flags: int = 0) -> int:
        """Append one record as the kernel commits it; returns its position."""
        pos = self.prod
        rec = struct.pack("<II", len(payload) | flags, 0) + payload
        rec += bytes(-len(rec) % 8)
        for i, byte in enumerate(rec):
            self.data[(pos + i) % RING] = byte
        os.pwrite(self.fd, bytes(self.data) * 2, 2 * PAGE)  # the data pages, mapped twice
        self.prod += len(rec)
        os.pwrite(self.fd, struct.pack("<Q", self.prod), PAGE)
        return pos

    def consumer(self) -> int:
        return struct.unpack("<Q", os.pread(self.fd, 8, 0))[0]


@pytest.fixture
def ring(tmp_path: Path) -> FakeRingFile:
    f = FakeRingFile(tmp_path / "ring")
    yield f
    os.close(f.fd)


def test_a_batch_is_every_committed_record_and_released_only_on_release(
        ring: FakeRingFile) -> None:
    batch = RingBatch(ring.fd, RING)
    try:
        a = ring.put(b"first")
        ring.put(b"gone", RINGBUF_DISCARD)  # discarded by the kernel: skipped
        c = ring.put(b"third!!!")
        assert batch.pending() == [(a, b"first"), (c, b"third!!!")]
        assert ring.consumer() == 0  # nothing released yet: a crash here loses nothing
        assert batch.pending() == [(a, b"first"), (c, b"third!!!")]  # read again
        batch.release()
        assert ring.consumer() == ring.prod
        assert batch.pending() == []
    finally:
        batch.close()


def test_a_record_still_being_written_ends_the_batch(ring: FakeRingFile) -> None:
    batch = RingBatch(ring.fd, RING)
    try:
        a = ring.put(b"done")
        busy = ring.put(b"busy", RINGBUF_BUSY)
        ring.put(b"after")
        assert batch.pending() == [(a, b"done")]
        batch.release()
        assert ring.consumer() == busy  # the busy one and what follows stay for next time
    finally:
        batch.close()


def test_a_record_that_wraps_reads_whole(ring: FakeRingFile) -> None:
    batch = RingBatch(ring.fd, RING)
    try:
        filler = b"x" * (RING - 24)
        ring.put(filler)
        batch.pending()
        batch.release()
        wrapped = bytes(range(200))
        pos = ring.put(wrapped)
        assert pos % RING > RING - 200  # the record crosses the end of the ring
        assert batch.pending() == [(pos, wrapped)]
    finally:
        batch.close()


def test_ring_batch_refuses_a_size_that_is_not_a_power_of_two(ring: FakeRingFile) -> None:
    with pytest.raises(ValueError, match="power of two"):
        RingBatch(ring.fd, 3000)


def _exec_raw(flags: int = 0, ino: int = 1234, ssh: tuple[int, int] = (0, 0)) -> bytes:
    return layout.EXEC_EVENT.pack(7, ino, layout.kernel_dev(os.makedev(8, 1)), 100, 1, 0, 0,
                                  flags, *ssh, b"touch", b"/usr/bin/touch")


def _exec_raw_v1(flags: int) -> bytes:
    """A record of the previous layout (no ssh_pid, ssh_pid_outer), as a pinned ring may
    hold it across an upgrade."""
    return struct.pack("<QQQIIIIII16s256s", 7, 1234, layout.kernel_dev(os.makedev(8, 1)),
                       100, 1, 0, 0, flags, 0, b"touch", b"/usr/bin/touch")


def test_a_record_of_the_previous_layout_decodes_with_no_session() -> None:
    (ev,) = ExecDecoder(0, RingIds(5, boot_id="boot")).events([(0, _exec_raw_v1(0))])
    assert len(_exec_raw_v1(0)) == layout.EXEC_EVENT_V1_SIZE
    assert ev.data["filename"] == "/usr/bin/touch" and "ssh_pid" not in ev.data
    assert ExecRecord.unpack(_exec_raw_v1(0)).comm == "touch"


@pytest.mark.parametrize("flags", [0, layout.EXEC_DENIED, layout.EXEC_DENIED | layout.EXEC_LSM,
                                   layout.EXEC_INTERP, layout.EXEC_DENIED | layout.EXEC_INTERP])
def test_the_exec_decoder_makes_the_events_from_record_makes(flags: int) -> None:
    ids = RingIds(5, boot_id="boot")
    raws = [(0, _exec_raw(flags)), (328, _exec_raw(flags, ino=2**64 - 1)),
            (656, _exec_raw(flags, ssh=(42, 0))), (984, _exec_raw(flags, ssh=(42, 7))),
            (1312, _exec_raw_v1(flags)),
            (1640, _exec_raw(flags, ssh=(42, 0)) + b"id\0-u\0".ljust(layout.EXEC_ARGS_LEN, b"\0"))]
    fast = ExecDecoder(1_000, ids).events(raws)
    for (pos, raw), ev in zip(raws, fast, strict=True):
        slow = from_record(ExecRecord.unpack(raw), 1_000)
        assert ev.id == ids(pos)
        assert (ev.ts_ns, ev.kind, ev.severity, ev.data) == (slow.ts_ns, slow.kind,
                                                            slow.severity, slow.data)
        # and the spool reader takes what it writes, as it takes a validated event
        assert Event.model_validate_json(ev.model_dump_json()) == ev


def test_ring_ids_are_the_same_for_a_record_read_twice_and_differ_otherwise() -> None:
    ids = RingIds(5, boot_id="boot")
    assert ids(328) == RingIds(5, boot_id="boot")(328)  # the next agent, same record
    assert len({ids(0), ids(328), RingIds(6, boot_id="boot")(0),
                RingIds(5, boot_id="reboot")(0)}) == 4
    assert ids(0).version == 4 and ids(0).variant == uuid.RFC_4122


def test_a_drained_batch_is_one_spool_write_and_one_fsync(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path)
    spool.append([Event(ts_ns=1, kind="agent", data={"what": "start"})])  # segment exists
    fsyncs: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (fsyncs.append(fd), real_fsync(fd))[1])
    events = ExecDecoder(0, RingIds(1, boot_id="b")).events(
        [(i * 328, _exec_raw()) for i in range(500)])
    size = spool.used()
    seqs = spool.append(events)
    assert len(fsyncs) == 1 and seqs == list(range(1, 501))
    assert spool.used() - size == sum(len(e.model_dump_json()) + 18 for e in events)


def test_policy_rules_are_looked_up_by_kind_and_match_as_the_lists_did() -> None:
    cfg = parse_config("""
policy:
  - {name: by-uid, kind: exec, match: {uid: [1, 33]}, action: alert}
  - {name: twice, kind: [exec, exec], match: {comm: [sh]}, action: log,
     threshold: {count: 2, seconds: 60}}
  - {name: conn, kind: connect, action: log}
""")
    pol = Policy(cfg.policy)

    def rules(kind: str, t: float = 0, **data: object) -> list[str]:
        return [d.rule for d in pol.evaluate(Event(ts_ns=1, kind=kind, data=data), now=t)]

    assert rules("exec", uid=33) == ["by-uid"]
    assert rules("exec", uid=True) == ["by-uid"]  # True == 1 in the list, as before
    assert rules("exec", uid=2) == []
    assert rules("drop") == []
    # a kind named twice is still one rule: its threshold counts each event once
    assert rules("exec", t=1, comm="sh") == []
    assert rules("exec", t=2, comm="sh") == ["twice"]


def test_a_record_that_does_not_decode_is_reported_and_released_with_the_rest(
        tmp_path: Path) -> None:
    from aegis_agent.daemon import Agent

    class Ring:  # pending/release as RingBatch has them
        released = False

        def pending(self) -> list[tuple[int, bytes]]:
            return [] if self.released else [(0, _exec_raw()), (328, b"short"),
                                              (400, _exec_raw())]

        def release(self) -> None:
            self.released = True

    agent = Agent(parse_config(f"spool: {{dir: {tmp_path}}}"))
    ring = Ring()
    agent._drain(ring, ExecDecoder(0, RingIds(1, boot_id="b")).events)  # type: ignore[arg-type]
    assert ring.released
    events = [e for _s, e in agent.spool.read(-1, 100)]
    assert [e.kind for e in events] == ["exec", "agent", "exec"]
    assert events[1].data["what"] == "ring_record_undecodable"
    assert events[1].data["ring_pos"] == 328 and events[1].data["size"] == 5


def test_a_load_apart_returns_its_result_and_its_error_with_errno() -> None:
    from aegis_agent.bpf.pinned import in_child
    from aegis_agent.bpf.syscall import BpfError

    assert in_child(lambda: "loaded with reason") == "loaded with reason"

    def refused() -> str:
        raise BpfError(13, "the kernel refused exec.bpf.o: Permission denied\nlog line")

    with pytest.raises(BpfError) as e:
        in_child(refused)
    assert e.value.errno == 13
    assert e.value.strerror == "the kernel refused exec.bpf.o: Permission denied\nlog line"

    with pytest.raises(BpfError, match="RuntimeError: boom"):
        in_child(lambda: (_ for _ in ()).throw(RuntimeError("boom")))


def test_a_drained_batch_pairs_each_records_pid_with_its_own_filename(
        ring: FakeRingFile) -> None:
    """Each record is decoded from its own bytes: no buffer is reused across a batch, so
    a deny's kill can never go to another record's process."""
    batch = RingBatch(ring.fd, RING)
    try:
        want = {}
        for i in range(15):  # more than the ring holds at once: the second batch wraps
            pid, path = 1000 + i, f"/opt/app-{i}/bin/tool-{'x' * i}"
            want[pid] = path
            ring.put(layout.EXEC_EVENT.pack(i, 10 + i, 0, pid, 1, 0, 0, 0, 0, 0, b"tool",
                                            path.encode()))
            if i == 7:  # half now, half after the producer wrapped
                events = ExecDecoder(0, RingIds(1, boot_id="b")).events(batch.pending())
                batch.release()
        events += ExecDecoder(0, RingIds(1, boot_id="b")).events(batch.pending())
        assert {e.data["pid"]: e.data["filename"] for e in events} == want
        assert [e.data["ino"] for e in events] == [10 + i for i in range(15)]
        assert ring.prod > RING  # it did wrap
    finally:
        batch.close()
