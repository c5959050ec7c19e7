"""Reading a BPF ring buffer.

Two readers:

``RingBatch`` (the agent): the ring mapped into this process, read without libbpf or a
call per record. ``pending()`` returns every committed record waiting, as raw bytes with
its ring position; the consumer position moves past them only on ``release()``, so the
agent writes and fsyncs a whole batch to its spool first: a process killed at any point
leaves every record it had not made durable in the (pinned) ring, for the next start.

    batch = RingBatch(map_fd, ring_bytes)
    loop.add_reader(batch.fileno(), drain)   # drain: pending() -> spool + fsync -> release()

``RingReader`` (tools and tests): each record decoded and handed to a sink once through
libbpf, which moves the consumer position past a record right after ``sink`` returns.

    reader = RingReader(map_fd, DropRecord.unpack, sink)
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Callable
from typing import Generic, TypeVar

from . import libbpf

# include/uapi/linux/bpf.h: struct bpf_ringbuf_hdr { u32 len; u32 pg_off; }
RINGBUF_BUSY = 1 << 31
RINGBUF_DISCARD = 1 << 30
RINGBUF_HDR = 8
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class RingBatch:
    """The records of ring-buffer map ``map_fd`` (``ring_bytes``: its max_entries, a
    power of two), read in batches from its memory mapping (the kernel's layout, as
    libbpf's ringbuf.c maps it: a read-write consumer page, then a read-only producer page
    followed by the data pages mapped twice, so a record that wraps reads straight)."""

    def __init__(self, map_fd: int, ring_bytes: int) -> None:
        if ring_bytes <= 0 or ring_bytes & (ring_bytes - 1):
            raise ValueError(f"ring size {ring_bytes} is not a power of two")
        page = mmap.PAGESIZE
        self._fd = map_fd
        self._mask = ring_bytes - 1
        self._page = page
        self._cons: mmap.mmap | None = mmap.mmap(map_fd, page, mmap.MAP_SHARED,
                                                 mmap.PROT_READ | mmap.PROT_WRITE)
        self._prod: mmap.mmap | None = mmap.mmap(map_fd, page + 2 * ring_bytes,
                                                 mmap.MAP_SHARED, mmap.PROT_READ,
                                                 offset=page)
        self._upto = self.consumer_pos

    @property
    def consumer_pos(self) -> int:
        return _U64.unpack_from(self._live()[0], 0)[0]

    def _live(self) -> tuple[mmap.mmap, mmap.mmap]:
        if self._cons is None or self._prod is None:
            raise ValueError("ring batch is closed")
        return self._cons, self._prod

    def fileno(self) -> int:
        """The map fd: readable while records wait (level-triggered, for
        ``loop.add_reader``)."""
        return self._fd

    def pending(self, limit: int = 1 << 16) -> list[tuple[int, bytes]]:
        """Up to ``limit`` records after the consumer position as (ring position, raw),
        oldest first; a record the kernel is still writing ends the batch, one it
        discarded is skipped. Nothing is released: see ``release``."""
        cons, prod = self._live()
        pos = _U64.unpack_from(cons, 0)[0]
        end = _U64.unpack_from(prod, 0)[0]
        base, mask, out = self._page, self._mask, []
        unpack_u32 = _U32.unpack_from
        while pos < end and len(out) < limit:
            at = base + (pos & mask)
            length = unpack_u32(prod, at)[0]
            if length & RINGBUF_BUSY:
                break
            size = length & ~(RINGBUF_BUSY | RINGBUF_DISCARD)
            if not length & RINGBUF_DISCARD:
                out.append((pos, prod[at + RINGBUF_HDR: at + RINGBUF_HDR + size]))
            pos += (size + RINGBUF_HDR + 7) & ~7
        self._upto = pos
        return out

    def release(self) -> None:
        """Give the slots of everything the last ``pending`` returned back to the kernel
        (call it once those records are durable)."""
        _U64.pack_into(self._live()[0], 0, self._upto)

    def close(self) -> None:
        for m in (self._cons, self._prod):
            if m is not None:
                m.close()
        self._cons = self._prod = None

T = TypeVar("T")


class RingReader(Generic[T]):
    """``sink(decode(raw))`` for every record of the ring-buffer map ``map_fd``."""

    def __init__(self, map_fd: int, decode: Callable[[bytes], T],
                 sink: Callable[[T], None]) -> None:
        self._ring: libbpf.RingBuffer | None = libbpf.RingBuffer(
            map_fd, lambda raw: sink(decode(raw)))

    def _live(self) -> libbpf.RingBuffer:
        if self._ring is None:
            raise ValueError("ring reader is closed")
        return self._ring

    def fileno(self) -> int:
        """An epoll fd, readable when records wait (for ``loop.add_reader``)."""
        return self._live().fileno()

    def drain(self) -> int:
        """Hand every waiting record to the sink (never blocks); returns how many."""
        return self._live().consume()

    def poll(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds for records, then hand them over."""
        return self._live().poll(int(timeout * 1000))

    def close(self) -> None:
        if self._ring is not None:
            self._ring.close()
            self._ring = None
