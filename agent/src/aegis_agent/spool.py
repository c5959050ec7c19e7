"""A durable, bounded, append-only event spool.

Records live in segment files ``seg-<first seq>.log``; each record is framed as

    magic b"AS" | u32 length | u32 crc32(seq + payload) | u64 seq | payload (Event JSON)

and every ``append`` ends with fsync, so a record whose ``append`` returned survives
kill -9 and power loss. On open, a torn record at the end of the newest segment (a
write cut short) is truncated away; a segment with a bad record anywhere else is moved
to ``corrupt/`` with a note saying why, reported through ``problems`` (the agent turns
them into events), and the spool goes on with the rest: nothing is deleted. A record
whose checksum is good but whose payload the current event model rejects (written by
another agent version) is set aside the same way, on its own, when it is read: copied to
``corrupt/record-<seq>.json`` with a note, reported by an agent event and counted in
``status``; the reader skips it, so one such record never stops the others.

The spool is bounded: past ``max_bytes`` the oldest segments are dropped (counted in
``dropped``); crossing ``high_water`` of it raises an alarm once until usage falls back.
The forwarder reads after its cursor and ``ack``s; the cursor is written atomically.
"""

from __future__ import annotations

import json
import os
import struct
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from aegis_protocol.events import Event, agent_event
from aegis_protocol.files import fsync_dir, write_atomically

MAGIC = b"AS"
HEADER = struct.Struct("<2sIIQ")
MAX_RECORD = 1 << 20


class SpoolError(OSError):
    """The spool directory cannot be used."""


@dataclass
class Problem:
    segment: str
    reason: str
    moved_to: str


@dataclass
class _Segment:
    path: Path
    first: int
    last: int = -1  # last seq in it (-1: empty)
    size: int = 0


@dataclass
class Spool:
    directory: Path
    max_bytes: int = 64 * 1024 * 1024
    segment_bytes: int = 4 * 1024 * 1024
    high_water: float = 0.8
    problems: list[Problem] = field(default_factory=list)
    dropped: int = 0
    alarm: bool = False
    records_set_aside: int = 0  # undecodable records set aside since start

    def __post_init__(self) -> None:
        self.directory = Path(self.directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as e:
            raise SpoolError(e.errno, f"spool directory {self.directory}: {e.strerror}") from e
        # the daemon appends on its event loop while the uplink thread reads and acks
        self._lock = threading.RLock()
        self._segments: list[_Segment] = []
        self._fh = None
        self._next = 0
        self._acked = self._read_cursor()
        paths = sorted(self.directory.glob("seg-*.log"))
        for i, path in enumerate(paths):
            self._scan(path, newest=i == len(paths) - 1)
        if self._segments:
            self._next = max(s.last for s in self._segments) + 1
            self._next = max(self._next, self._segments[-1].first)
        self._next = max(self._next, self._acked + 1)

    # -- opening -------------------------------------------------------------------------
    def _scan(self, path: Path, newest: bool) -> None:
        """Validate one segment; truncate a torn tail, set aside a corrupt middle."""
        try:
            first = int(path.stem.split("-", 1)[1])
        except ValueError:
            self._set_aside(path, "file name is not seg-<number>.log")
            return
        data = path.read_bytes()
        seg = _Segment(path, first)
        off = 0
        while off < len(data):
            bad = self._bad_record(data, off)
            if bad is None:
                length = HEADER.unpack_from(data, off)[1]
                seg.last = HEADER.unpack_from(data, off)[3]
                off += HEADER.size + length
                continue
            if newest and self._is_torn_tail(data, off):
                with path.open("r+b") as fh:
                    fh.truncate(off)
                    os.fsync(fh.fileno())
                break
            self._set_aside(path, f"{bad} at byte {off}")
            return
        seg.size = off
        self._segments.append(seg)

    @staticmethod
    def _bad_record(data: bytes, off: int) -> str | None:
        if len(data) - off < HEADER.size:
            return "truncated record header"
        magic, length, crc, seq = HEADER.unpack_from(data, off)
        if magic != MAGIC:
            return "bad record marker"
        if length > MAX_RECORD or off + HEADER.size + length > len(data):
            return "record runs past the end of the file"
        payload = data[off + HEADER.size: off + HEADER.size + length]
        if zlib.crc32(struct.pack("<Q", seq) + payload) != crc:
            return "checksum mismatch"
        return None

    def _is_torn_tail(self, data: bytes, off: int) -> bool:
        """A bad record in the newest segment is a write cut short when no valid record
        follows it; anything else is corruption."""
        probe = data.find(MAGIC, off + 1)
        while probe != -1:
            if self._bad_record(data, probe) is None:
                return False
            probe = data.find(MAGIC, probe + 1)
        return True

    def _set_aside(self, path: Path, reason: str) -> None:
        corrupt = self.directory / "corrupt"
        corrupt.mkdir(exist_ok=True, mode=0o700)
        dest = corrupt / f"{path.name}.{time.strftime('%Y%m%dT%H%M%S')}"
        os.replace(path, dest)
        dest.with_name(dest.name + ".why").write_text(reason + "\n")
        fsync_dir(corrupt)
        fsync_dir(self.directory)
        self.problems.append(Problem(path.name, reason, str(dest)))

    # -- writing ---------------------------------------------------------------------------
    def append(self, events: list[Event], *, sync: bool = True) -> list[int]:
        """Write ``events`` durably (fsync before returning); returns their sequence numbers.

        ``sync=False`` writes them to the file (they survive the process being killed) and
        leaves the fsync to the next ``sync()``: for events whose only other copy is a
        kernel ring buffer, written one by one before the ring advances."""
        with self._lock:
            seqs = []
            frames: list[tuple[int, bytes]] = []
            for event in events:
                payload = event.model_dump_json().encode()
                seq = self._next
                self._next += 1
                crc = zlib.crc32(struct.pack("<Q", seq) + payload)
                frames.append((seq, HEADER.pack(MAGIC, len(payload), crc, seq) + payload))
                seqs.append(seq)
            i = 0
            while i < len(frames):
                seg = self._writable(frames[i][0])
                assert self._fh is not None
                room = max(self.segment_bytes - seg.size, 1)
                j, size = i, 0
                while j < len(frames) and (j == i or size + len(frames[j][1]) <= room):
                    size += len(frames[j][1])
                    j += 1
                self._fh.write(b"".join(f for _s, f in frames[i:j]))
                self._fh.flush()
                if sync:
                    os.fsync(self._fh.fileno())
                seg.size += size
                seg.last = frames[j - 1][0]
                i = j
            self._enforce_bound()
            return seqs

    def sync(self) -> None:
        """fsync what ``append(sync=False)`` wrote."""
        with self._lock:
            if self._fh is not None:
                os.fsync(self._fh.fileno())

    def _writable(self, seq: int) -> _Segment:
        seg = self._segments[-1] if self._segments else None
        if seg is None or seg.size >= self.segment_bytes or self._fh is None:
            if seg is not None and seg.size < self.segment_bytes and self._fh is None:
                self._fh = seg.path.open("ab")
                return seg
            self.close()
            path = self.directory / f"seg-{seq:020d}.log"
            seg = _Segment(path, seq)
            self._fh = path.open("ab")
            fsync_dir(self.directory)
            self._segments.append(seg)
        return seg

    def _enforce_bound(self) -> None:
        while self.used() > self.max_bytes and len(self._segments) > 1:
            old = self._segments.pop(0)
            self.dropped += max(0, old.last - max(old.first, self._acked + 1) + 1)
            old.path.unlink()
        self.alarm_changed()

    def alarm_changed(self) -> bool:
        """Update the high-water alarm; True when it was just raised."""
        over = self.used() >= self.high_water * self.max_bytes
        raised = over and not self.alarm
        self.alarm = over
        return raised

    # -- reading and acking ------------------------------------------------------------------
    def read(self, after: int | None = None, limit: int = 1000) -> list[tuple[int, Event]]:
        """Up to ``limit`` records with seq > ``after`` (default: the ack cursor); records
        the event model rejects are set aside and skipped (see ``read_batch``)."""
        return self.read_batch(after, limit)[0]

    def read_batch(self, after: int | None = None,
                   limit: int = 1000) -> tuple[list[tuple[int, Event]], int]:
        """Up to ``limit`` decodable records with seq > ``after`` (default: the ack
        cursor), and the last seq this read went through, set-aside records included: the
        forwarder acks up to it, so an undecodable record is passed over once, not retried."""
        with self._lock:
            after = self._acked if after is None else after
            out: list[tuple[int, Event]] = []
            upto = after
            reports: list[Event] = []
            for seg in self._segments:
                if seg.last <= after:
                    continue
                data = seg.path.read_bytes()[: seg.size]
                off = 0
                while off < len(data) and len(out) < limit:
                    _m, length, _crc, seq = HEADER.unpack_from(data, off)
                    if seq > after:
                        payload = data[off + HEADER.size: off + HEADER.size + length]
                        try:
                            out.append((seq, Event.model_validate_json(payload)))
                        except ValidationError as e:
                            reports += self._set_record_aside(seq, payload, e)
                        upto = seq
                    off += HEADER.size + length
                if len(out) >= limit:
                    break
            if reports:  # appended after the scan: appending may drop old segments
                self.append(reports)
            return out, upto

    def _set_record_aside(self, seq: int, payload: bytes,
                          error: ValidationError) -> list[Event]:
        """Copy one undecodable record to ``corrupt/`` with why; returns the agent event
        that reports it (none when it was set aside before) and counts it for ``status``.
        The segment stays as it is."""
        corrupt = self.directory / "corrupt"
        dest = corrupt / f"record-{seq:020d}.json"
        if dest.exists():  # already set aside and reported (read again before an ack)
            return []
        reason = _rejection(error)
        corrupt.mkdir(exist_ok=True, mode=0o700)
        write_atomically(dest, payload, mode=0o600)
        write_atomically(dest.with_name(dest.name + ".why"), reason.encode() + b"\n")
        self.records_set_aside += 1
        return [agent_event("spool_record_set_aside", "warning", seq=seq, reason=reason,
                            moved_to=str(dest))]

    def ack(self, upto: int) -> None:
        """Everything up to ``upto`` is delivered; fully acked segments are removed."""
        with self._lock:
            if upto <= self._acked:
                return
            self._acked = upto
            write_atomically(self.directory / "cursor.json", json.dumps({"acked": upto}).encode())
            while len(self._segments) > 1 and self._segments[0].last <= upto:
                self._segments.pop(0).path.unlink()
            self.alarm_changed()

    def _read_cursor(self) -> int:
        cursor = self.directory / "cursor.json"
        try:
            return int(json.loads(cursor.read_text())["acked"])
        except FileNotFoundError:
            return -1
        except (ValueError, KeyError, TypeError):
            dest = self.directory / "corrupt" / f"cursor.json.{time.strftime('%Y%m%dT%H%M%S')}"
            dest.parent.mkdir(exist_ok=True, mode=0o700)
            os.replace(cursor, dest)
            self.problems.append(Problem("cursor.json", "unreadable ack cursor: everything "
                                         "still spooled will be sent again", str(dest)))
            return -1

    # -- state ----------------------------------------------------------------------------------
    @property
    def acked(self) -> int:
        return self._acked

    @property
    def next_seq(self) -> int:
        return self._next

    def used(self) -> int:
        return sum(s.size for s in self._segments)

    def pending(self) -> int:
        return sum(max(0, s.last - max(s.first, self._acked + 1) + 1) for s in self._segments)

    def status(self) -> dict[str, object]:
        return {"dir": str(self.directory), "used_bytes": self.used(), "max_bytes": self.max_bytes,
                "pending": self.pending(), "acked": self._acked, "next_seq": self._next,
                "dropped": self.dropped, "high_water_alarm": self.alarm,
                "corrupt_set_aside": len(self.problems),
                "records_set_aside": self.records_set_aside}

    def close(self) -> None:
        if self._fh is not None:
            os.fsync(self._fh.fileno())  # a segment may hold append(sync=False) writes
            self._fh.close()
            self._fh = None


def _rejection(error: ValidationError) -> str:
    """Why the event model rejected a record: field paths and messages, never the values
    (a record may carry anything)."""
    parts = [f"{'.'.join(str(p) for p in err['loc']) or 'record'}: {err['msg']}"
             for err in error.errors(include_input=False, include_url=False)[:5]]
    return ("event model rejects the record (written by another agent version?): "
            + "; ".join(parts))[:500]
