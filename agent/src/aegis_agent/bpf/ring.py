"""Reading a BPF ring buffer: each record decoded and handed to a sink once.

    reader = RingReader(map_fd, DropRecord.unpack, sink)
    loop.add_reader(reader.fileno(), reader.drain)

libbpf moves the ring's consumer position past a record right after ``sink`` returns,
so a sink that writes the record out (the agent's spool) loses nothing when the process
is killed. The reader keeps no buffer of its own: what the sink does not keep is gone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from . import libbpf

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
