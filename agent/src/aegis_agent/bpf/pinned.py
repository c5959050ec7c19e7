"""One BPF object pinned under one directory: load + pin, reopen with every map checked,
close, unpin (tetragon's Sensor, cilium/ebpf's pin package).

    class ExecMonitor(PinnedObject):
        OBJECT = "exec"
        MAPS = layout.EXEC_MAPS            # name -> MapSpec(key, value, type, max_entries)
        PROGRAMS = ("exec_trace", "exec_lsm")
        RING = "exec_events"

    mon = ExecMonitor(pin_dir)
    mon.load()                             # load the .bpf.o, pin maps and programs, open
    mon.open()                             # or: a restarted agent re-opens the pins
    mon.map_fd("exec_deny"); mon.prog_fd("exec_trace")
    mon.close()                            # fds only: pins (and enforcement) stay
    mon.remove()                           # unpin everything in the directory

A component (segment filter, exec and connect monitors) subclasses it, declares its maps
and programs, and keeps only its own verbs. ``open()`` compares every declared map with
the pinned one (key and value size, type, max_entries) and refuses pins from another
build with an error that names the pin, the map, what differs and the fix.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from . import libbpf, syscall
from .bpffs import PIN_ROOT, ensure_bpffs
from .layout import MapSpec
from .objects import object_path
from .ring import RingBatch, RingReader
from .syscall import BpfError

T = TypeVar("T")


def in_child(work: Callable[[], str]) -> str:
    """Run ``work`` (a load that pins what it loads) in a forked child and return what it
    returns; its exception comes back as a BpfError with the same errno and message
    (libbpf's log included). Loading parses
    the kernel's BTF (libbpf: ~10 MiB of heap for a moment): done apart, it never counts
    in the long-running agent's memory, whose pins then find what the child pinned."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no return from here
        code = 0
        try:
            os.close(read_fd)
            out = work()
        except OSError as e:  # BpfError, LibbpfError, a missing object file
            out, code = f"{e.errno or 0}\n{e.strerror or e}", 1
        except BaseException as e:  # every failure goes back to the parent
            out, code = f"0\n{type(e).__name__}: {e}", 1
        try:
            os.write(write_fd, out.encode(errors="replace")[:60000])
        finally:
            os._exit(code)
    os.close(write_fd)
    chunks = []
    with os.fdopen(read_fd, "rb") as fh:
        chunks.append(fh.read())
    _pid, status = os.waitpid(pid, 0)
    out = b"".join(chunks).decode(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        err, _nl, msg = out.partition("\n")
        raise BpfError(int(err) if err.isdigit() else 0,
                       msg or f"the loading process failed (wait status {status})")
    return out


class PinMismatchError(BpfError):
    """A pinned map is not the map this agent declares (pins from another build)."""


class PinnedObject:
    """The maps and programs of ``<OBJECT>.bpf.o``, pinned in ``pin_dir``."""

    OBJECT: ClassVar[str] = ""
    MAPS: ClassVar[Mapping[str, MapSpec]] = {}
    PROGRAMS: ClassVar[tuple[str, ...]] = ()
    RING: ClassVar[str] = ""  # the ring-buffer map records come from ("": none)

    def __init__(self, pin_dir: str | os.PathLike | None = None,
                 object_file: str | os.PathLike | None = None) -> None:
        self.pin_dir = Path(pin_dir) if pin_dir else PIN_ROOT / self.OBJECT
        self.object_file = object_file
        self._maps: dict[str, int] = {}
        self._progs: dict[str, int] = {}
        self._readers: list[RingReader[Any] | RingBatch] = []

    # -- lifecycle -----------------------------------------------------------------------
    def pin(self, name: str) -> Path:
        return self.pin_dir / name

    @property
    def loaded(self) -> bool:
        """Whether the object is pinned (its first declared map is)."""
        return self.pin(next(iter(self.MAPS))).exists()

    @property
    def is_open(self) -> bool:
        return bool(self._maps)

    def load(self, skip: tuple[str, ...] = ()) -> None:
        """Load the object without the programs in ``skip``, pin every declared map and
        the other programs, and open the pins; on failure nothing stays pinned."""
        ensure_bpffs(self.pin_dir)
        obj = libbpf.load_object(str(object_path(self.OBJECT, self.object_file)), skip)
        self.pin_dir.mkdir(parents=True, exist_ok=True)
        try:
            for name in self.MAPS:
                syscall.obj_pin(obj.map_fd(name), str(self.pin(name)))
            for prog in self.PROGRAMS:
                if prog not in skip:
                    syscall.obj_pin(obj.program_fd(prog), str(self.pin(prog)))
            self.open()
        except BaseException:
            self.close()
            self.remove()
            raise
        finally:
            obj.close()

    def open(self) -> None:
        """Open every declared map's pin and check it against its declaration (raises
        PinMismatchError), then the programs that are pinned. Idempotent."""
        if self._maps:
            return
        try:
            for name, spec in self.MAPS.items():
                fd = syscall.obj_get(str(self.pin(name)))
                self._maps[name] = fd
                self._check(name, spec, syscall.map_info(fd))
            for prog in self.PROGRAMS:
                if self.pin(prog).exists():
                    self._progs[prog] = syscall.obj_get(str(self.pin(prog)))
        except BaseException:
            self.close()
            raise

    def _check(self, name: str, spec: MapSpec, info: syscall.MapInfo) -> None:
        wanted = {"key size": spec.key_size, "value size": spec.value_size,
                  "type": spec.type, "max_entries": spec.max_entries}
        found = {"key size": info.key_size, "value size": info.value_size,
                 "type": info.type, "max_entries": info.max_entries}
        wrong = [f"{what} {found[what]} (expected {want})" for what, want in wanted.items()
                 if want is not None and found[what] != want]
        if wrong:
            raise PinMismatchError(
                0, f"pinned map {self.pin(name)} (map {name!r} of {self.OBJECT}.bpf.o) has "
                   f"{', '.join(wrong)}: the pins come from another build of the agent; "
                   f"detach and re-attach (or remove {self.pin_dir}) to load this build")

    def close(self) -> None:
        """Close this process's fds and ring readers; pinned objects (and enforcement)
        stay."""
        for reader in self._readers:
            reader.close()
        self._readers.clear()
        for fd in [*self._maps.values(), *self._progs.values()]:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._maps.clear()
        self._progs.clear()

    def remove(self) -> None:
        """Unpin everything under the pin directory (links first die with their pins),
        then the directory itself. Idempotent."""
        if not self.pin_dir.exists():
            return
        for path in sorted(self.pin_dir.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(FileNotFoundError):
                path.rmdir() if path.is_dir() else path.unlink()
        self.pin_dir.rmdir()

    def __enter__(self) -> PinnedObject:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- fds -----------------------------------------------------------------------------
    def map_fd(self, name: str) -> int:
        """The fd of a declared map, re-opening the pins when needed."""
        if not self._maps:
            if not self.loaded:
                raise BpfError(2, f"no {self.OBJECT} object pinned at {self.pin_dir}: "
                                  "load (attach/start) it first")
            self.open()
        return self._maps[name]

    def prog_fd(self, name: str) -> int:
        if not self._maps:
            self.map_fd(next(iter(self.MAPS)))
        if name not in self._progs:
            raise BpfError(2, f"program {name!r} is not pinned at {self.pin_dir}")
        return self._progs[name]

    def percpu_sum(self, map_name: str, slot: int) -> int:
        """The sum over CPUs of a per-CPU array's __u64 at ``slot`` (0 when absent)."""
        ncpu = syscall.possible_cpus()
        raw = syscall.map_lookup(self.map_fd(map_name), slot.to_bytes(4, "little"), 8 * ncpu)
        return sum(int.from_bytes(raw[i:i + 8], "little")
                   for i in range(0, len(raw), 8)) if raw else 0

    # -- ring records --------------------------------------------------------------------
    def decode(self, raw: bytes) -> Any:
        """One ring record as this component's record type."""
        raise NotImplementedError

    def reader(self, sink: Callable[[Any], None], ring: str = "",
               decode: Callable[[bytes], Any] | None = None) -> RingReader[Any]:
        """A reader of the ``RING`` map (or of ``ring``, whose records ``decode`` reads)
        handing each decoded record to ``sink`` once, before the ring advances past it;
        closed with this object."""
        reader = RingReader(self.map_fd(ring or self.RING), decode or self.decode, sink)
        self._readers.append(reader)
        return reader

    def batch(self) -> RingBatch:
        """The ``RING`` map read in batches that are released only once written out (the
        agent's reader, see ``ring.RingBatch``); closed with this object."""
        size = self.MAPS[self.RING].max_entries
        assert size is not None, f"{self.RING} declares no size"
        batch = RingBatch(self.map_fd(self.RING), size)
        self._readers.append(batch)
        return batch

    def records(self, timeout: float = 0.0) -> list[Any]:
        """The records waiting in the ring (waits up to ``timeout`` seconds for the
        first one): for tools and tests; the agent uses ``reader``."""
        found: list[Any] = []
        reader = RingReader(self.map_fd(self.RING), self.decode, found.append)
        try:
            reader.poll(timeout)
            reader.drain()
        finally:
            reader.close()
        return found
