"""Exec and connect monitors: host-wide tracing programs whose events come out of ring
buffers as protocol events, plus the two enforcement points they carry.

    execs = ExecMonitor("/sys/fs/bpf/aegis/exec")
    execs.start()                 # {"mode": "sigkill", "reason": "..."}
    execs.deny("/usr/bin/nc")     # the next exec of that file is killed before it runs
    loop.add_reader(execs.fileno(), lambda: spool(execs.consume()))

    conns = ConnectMonitor("/sys/fs/bpf/aegis/connect")
    conns.start()
    conns.quarantine_cgroup("/sys/fs/cgroup/unified/system.slice/web.service",
                            allow=["192.0.2.10 tcp/443"])

Maps, programs and links are pinned under the monitor's directory, so an agent restart
finds them attached and keeps enforcing; ``stop()`` removes everything it pinned.

Exec deny runs in one of two modes, reported by ``start()``: ``lsm`` (BPF-LSM on
bprm_check_security refuses the exec with EPERM) where the kernel allows BPF-LSM, else
``sigkill`` (tp_btf/sched_process_exec sends SIGKILL, delivered before the new image's
first instruction).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path

from aegis_protocol.events import Event

from . import libbpf, syscall
from .bpffs import ensure_bpffs
from .objects import object_path
from .syscall import BpfError

log = logging.getLogger(__name__)

PIN_ROOT = Path("/sys/fs/bpf/aegis")
LSM_LIST = Path("/sys/kernel/security/lsm")

_EXEC_EVENT = struct.Struct("<QQQIIIII4x16s256s")
_CONNECT_EVENT = struct.Struct("<QQIIIIII16s16s")
_DENIED, _LSM = 1, 2
_STATS = ("events", "lost", "denied")
_SCOPE = struct.Struct("<QQI4x")
PROC_PID_INIT_INO = 0xEFFFFFFC  # the inode of the initial (host) PID namespace


def pid_scope(mode: str = "auto") -> tuple[int, int] | None:
    """The (kernel dev, inode) of this process's PID namespace when the monitors must
    stay inside it, else None (host-wide). ``auto``: scoped when this process is not in
    the host's initial PID namespace, i.e. the agent runs inside a container node."""
    if mode == "host":
        return None
    st = os.stat("/proc/self/ns/pid")
    if mode == "auto" and st.st_ino == PROC_PID_INIT_INO:
        return None
    return kernel_dev(st.st_dev), st.st_ino


class MonitorError(BpfError):
    """A monitor could not be started or asked to do something impossible."""


def _wall_offset_ns() -> int:
    """Add to bpf_ktime_get_ns() (CLOCK_MONOTONIC) to get wall-clock ns."""
    return time.time_ns() - time.monotonic_ns()


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def kernel_dev(st_dev: int) -> int:
    """A stat() device number in the kernel's internal encoding (major << 20 | minor)."""
    return (os.major(st_dev) << 20) | os.minor(st_dev)


def _user_dev(kdev: int) -> int:
    return os.makedev(kdev >> 20, kdev & 0xFFFFF)


class _Monitor:
    """Shared lifecycle: load once and pin maps + programs, attach links, re-open pins."""

    NAME = ""
    MAPS: tuple[str, ...] = ()
    RING = ""
    STATS_MAP = ""

    def __init__(self, pin_dir: str | os.PathLike | None = None,
                 object_file: str | os.PathLike | None = None, *, scope: str = "auto") -> None:
        self.pin_dir = Path(pin_dir) if pin_dir else PIN_ROOT / self.NAME
        self.object_file = object_file
        self.scope = pid_scope(scope)
        self._maps: dict[str, int] = {}
        self._ring: libbpf.RingBuffer | None = None
        self._pending: list[Event] = []
        self._offset = _wall_offset_ns()
        # Called with each event before the ring buffer's consumer position moves past
        # it: a sink that write()s the event out (the agent's spool) loses nothing when
        # the process is killed, since the ring only advances over what was written.
        self.sink: Callable[[Event], None] | None = None

    def _pin(self, name: str) -> Path:
        return self.pin_dir / name

    @property
    def loaded(self) -> bool:
        return self._pin(self.MAPS[0]).exists()

    def _load(self, programs: tuple[str, ...], skip: tuple[str, ...] = ()) -> None:
        """Load the object (without ``skip``) and pin its maps and ``programs``."""
        obj = libbpf.load_object(str(object_path(self.NAME, self.object_file)), skip)
        self.pin_dir.mkdir(parents=True, exist_ok=True)
        try:
            for name in self.MAPS:
                syscall.obj_pin(obj.map_fd(name), str(self._pin(name)))
            for prog in programs:
                syscall.obj_pin(obj.program_fd(prog), str(self._pin(prog)))
        except BaseException:
            self._remove_pins()
            raise
        finally:
            obj.close()

    def _open(self) -> None:
        for name in self.MAPS:
            if name not in self._maps:
                self._maps[name] = syscall.obj_get(str(self._pin(name)))

    def _set_scope(self) -> dict[str, object]:
        """Write the PID-namespace scope before anything is attached (see bpf/scope.h)."""
        dev, ino = self.scope or (0, 0)
        syscall.map_update(self._maps[f"{self.NAME}_scope"], bytes(4),
                           _SCOPE.pack(dev, ino, 1 if self.scope else 0))
        return ({"pid_namespace": ino} if self.scope else {"pid_namespace": "host (all)"})

    def _link(self, prog: str, target: int, attach_type: int, pin: str) -> None:
        """Attach pinned ``prog`` with a BPF link pinned at ``pin`` (kept if alive)."""
        if self._pin(pin).exists():
            return
        prog_fd = syscall.obj_get(str(self._pin(prog)))
        try:
            link_fd = syscall.link_create(prog_fd, target, attach_type)
        finally:
            os.close(prog_fd)
        try:
            syscall.obj_pin(link_fd, str(self._pin(pin)))
        finally:
            os.close(link_fd)

    def fileno(self) -> int:
        """The ring buffer's epoll fd (readable when events wait), for add_reader."""
        return self._ringbuf().fileno()

    def _ringbuf(self) -> libbpf.RingBuffer:
        if self._ring is None:
            self._open()
            self._ring = libbpf.RingBuffer(self._maps[self.RING], self._on_record)
        return self._ring

    def _on_record(self, raw: bytes) -> None:
        event = self._event(raw)
        if self.sink is not None:
            self.sink(event)
        self._pending.append(event)

    def _event(self, raw: bytes) -> Event:
        raise NotImplementedError

    def consume(self) -> list[Event]:
        """The events waiting in the ring buffer (never blocks)."""
        self._ringbuf().consume()
        events, self._pending = self._pending, []
        return events

    def wait(self, timeout: float) -> list[Event]:
        """Wait up to ``timeout`` seconds for events, then drain them."""
        self._ringbuf().poll(int(timeout * 1000))
        return self.consume()

    def stats(self) -> dict[str, int]:
        self._open()
        fd = self._maps[self.STATS_MAP]
        ncpu = syscall.possible_cpus()
        out = {}
        for slot, name in enumerate(_STATS):
            raw = syscall.map_lookup(fd, slot.to_bytes(4, "little"), 8 * ncpu) or b""
            out[name] = sum(struct.unpack(f"<{len(raw) // 8}Q", raw))
        return out

    def close(self) -> None:
        """Close this process's fds; pins (and enforcement) stay."""
        if self._ring:
            self._ring.close()
            self._ring = None
        for fd in self._maps.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._maps.clear()

    def stop(self) -> None:
        """Detach and unpin everything this monitor pinned."""
        self.close()
        self._remove_pins()

    def _remove_pins(self) -> None:
        if not self.pin_dir.exists():
            return
        for path in sorted(self.pin_dir.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if path.is_dir():
                path.rmdir()
            else:
                path.unlink()
        self.pin_dir.rmdir()

    def __enter__(self) -> _Monitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def bpf_lsm_enabled() -> tuple[bool, str]:
    """Whether the kernel runs BPF-LSM hooks (``bpf`` in the active LSM list)."""
    try:
        active = LSM_LIST.read_text().strip()
    except OSError as e:
        return False, f"cannot read {LSM_LIST} ({e.strerror}; securityfs not mounted?)"
    if "bpf" in active.split(","):
        return True, f"bpf is in the active LSM list ({active})"
    return False, f"bpf is not in the active LSM list ({active}); boot with lsm=...,bpf"


class ExecMonitor(_Monitor):
    """Every exec on the host as an event; execs of denied files killed or refused."""

    NAME = "exec"
    MAPS = ("exec_events", "exec_deny", "exec_stats", "exec_scope")
    RING = "exec_events"
    STATS_MAP = "exec_stats"

    def __init__(self, pin_dir: str | os.PathLike | None = None,
                 object_file: str | os.PathLike | None = None, *, lsm: bool = True,
                 scope: str = "auto") -> None:
        super().__init__(pin_dir, object_file, scope=scope)
        self.try_lsm = lsm
        self.reason = ""

    @property
    def mode(self) -> str:
        return "lsm" if self._pin("link_exec_lsm").exists() else "sigkill"

    def start(self) -> dict[str, object]:
        """Load, pin and attach (or find it attached). Tries BPF-LSM first."""
        ensure_bpffs(self.pin_dir)
        reused = self.loaded
        if not reused:
            self.reason = self._load_best()
        self._open()
        scope = self._set_scope()
        self._link("exec_trace", 0, syscall.ATTACH_TRACE_RAW_TP, "link_exec_trace")
        if self._pin("exec_lsm").exists():
            try:
                self._link("exec_lsm", 0, syscall.ATTACH_LSM_MAC, "link_exec_lsm")
            except BpfError as e:
                self.reason = f"BPF-LSM program loaded but could not attach ({e}); using SIGKILL"
                self._pin("exec_lsm").unlink()
        if reused and not self.reason:
            self.reason = "found attached in the pin directory"
        info = {"mode": self.mode, "reason": self.reason, "reused": reused,
                "pin_dir": str(self.pin_dir), **scope}
        log.info("exec monitor started", extra={"monitor": info})
        return info

    def _load_best(self) -> str:
        """Load with the BPF-LSM program when the kernel takes it and runs BPF-LSM hooks,
        else without it; returns why the mode is what it is."""
        if not self.try_lsm:
            self._load(("exec_trace",), skip=("exec_lsm",))
            return "SIGKILL from tp_btf/sched_process_exec (BPF-LSM not tried: lsm=False)"
        try:
            self._load(("exec_trace", "exec_lsm"))
        except BpfError as e:
            first = str(e).splitlines()[0]
            self._load(("exec_trace",), skip=("exec_lsm",))
            return f"SIGKILL from tp_btf/sched_process_exec: the kernel refused BPF-LSM ({first})"
        enabled, why = bpf_lsm_enabled()
        if enabled:
            return f"BPF-LSM on bprm_check_security: {why}"
        self._pin("exec_lsm").unlink()
        return f"SIGKILL from tp_btf/sched_process_exec: BPF-LSM loads but does not run ({why})"

    @staticmethod
    def _key(path: str) -> tuple[bytes, os.stat_result]:
        try:
            st = os.stat(path)
        except OSError as e:
            raise MonitorError(e.errno or 2, f"exec deny: cannot stat {path!r}: {e.strerror}; "
                                             "give the path of an existing executable") from e
        if not os.path.isfile(path):
            raise MonitorError(21, f"exec deny: {path!r} is not a regular file")
        return struct.pack("<QQ", kernel_dev(st.st_dev), st.st_ino), st

    def deny(self, path: str) -> None:
        """Deny executing ``path`` (its device and inode: a copy elsewhere is another file,
        a hard link is the same one)."""
        key, _st = self._key(path)
        self._open()
        syscall.map_update(self._maps["exec_deny"], key, struct.pack("<I", 1))

    def allow(self, path: str) -> bool:
        key, _st = self._key(path)
        self._open()
        return syscall.map_delete(self._maps["exec_deny"], key)

    def denied(self) -> list[dict[str, int]]:
        self._open()
        out = []
        for key in syscall.map_keys(self._maps["exec_deny"], 16):
            kdev, ino = struct.unpack("<QQ", key)
            out.append({"dev": _user_dev(kdev), "ino": ino})
        return out

    def stats(self) -> dict[str, object]:
        return {**super().stats(), "mode": self.mode}

    def _event(self, raw: bytes) -> Event:
        (ktime, ino, kdev, pid, ppid, uid, gid, flags, comm,
         filename) = _EXEC_EVENT.unpack_from(raw)
        denied = bool(flags & _DENIED)
        return Event(
            ts_ns=ktime + self._offset,
            kind="exec_denied" if denied else "exec",
            severity="warning" if denied else "info",
            data={"pid": pid, "ppid": ppid, "uid": uid, "gid": gid, "comm": _cstr(comm),
                  "filename": _cstr(filename), "ino": ino, "dev": _user_dev(kdev),
                  **({"enforced_by": "lsm" if flags & _LSM else "sigkill"} if denied else {})})


def _mgmt_key(spec: str) -> bytes:
    """'ADDR', 'ADDR PORT' or 'ADDR tcp/PORT' -> the connect_mgmt key."""
    parts = spec.replace("/", " ").split()
    try:
        addr = ipaddress.ip_address(parts[0])
        port = int(parts[-1]) if len(parts) > 1 else 0
        if not 0 <= port <= 65535 or (len(parts) == 3 and parts[1] not in ("tcp", "udp")):
            raise ValueError
    except (ValueError, IndexError):
        raise MonitorError(22, f"management destination {spec!r}: use 'ADDRESS', 'ADDRESS PORT' "
                               "or 'ADDRESS tcp/PORT', e.g. '192.0.2.10 tcp/22'") from None
    if addr.version == 4:
        addr = ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + addr.packed)
    return addr.packed + struct.pack("<I", port)


class ConnectMonitor(_Monitor):
    """Every outbound TCP connect on the host as an event; quarantined cgroups may only
    connect to their management destinations."""

    NAME = "connect"
    MAPS = ("connect_events", "connect_mgmt", "connect_stats", "connect_scope")
    RING = "connect_events"
    STATS_MAP = "connect_stats"
    _PROGS = ("connect_trace", "connect4", "connect6")

    def start(self) -> dict[str, object]:
        ensure_bpffs(self.pin_dir)
        reused = self.loaded
        if not reused:
            self._load(self._PROGS)
        self._open()
        scope = self._set_scope()
        self._link("connect_trace", 0, syscall.ATTACH_TRACE_RAW_TP, "link_connect_trace")
        info = {"hook": "tp_btf/inet_sock_set_state (TCP, IPv4 and IPv6)",
                "deny": "cgroup/connect4 + cgroup/connect6 on quarantined cgroups",
                "reused": reused, "pin_dir": str(self.pin_dir), **scope}
        log.info("connect monitor started", extra={"monitor": info})
        return info

    @staticmethod
    def _cgroup_id(cgroup_path: str) -> int:
        path = Path(cgroup_path)
        if not (path / "cgroup.procs").is_file():
            raise MonitorError(2, f"{cgroup_path!r} is not a cgroup directory (no cgroup.procs); "
                                  "give a cgroup v2 directory, e.g. /sys/fs/cgroup/unified/...")
        return os.stat(path).st_ino

    def set_management(self, allow: list[str]) -> None:
        """Replace the destinations quarantined cgroups may still reach."""
        keys = {_mgmt_key(spec) for spec in allow}
        self._open()
        fd = self._maps["connect_mgmt"]
        for old in list(syscall.map_keys(fd, 20)):
            if old not in keys:
                syscall.map_delete(fd, old)
        for key in keys:
            syscall.map_update(fd, key, struct.pack("<I", 1))

    def quarantine_cgroup(self, cgroup_path: str, allow: list[str] | None = None) -> None:
        """Refuse connect() from processes in ``cgroup_path`` (and below) except to
        ``allow`` (when given, it replaces the management list)."""
        cgid = self._cgroup_id(cgroup_path)
        if allow is not None:
            self.set_management(allow)
        self._open()
        fd = os.open(cgroup_path, os.O_RDONLY | os.O_DIRECTORY)
        (self.pin_dir / "cgroups").mkdir(exist_ok=True)
        try:
            for prog, attach in (("connect4", syscall.ATTACH_CGROUP_INET4_CONNECT),
                                 ("connect6", syscall.ATTACH_CGROUP_INET6_CONNECT)):
                self._link(prog, fd, attach, f"cgroups/{cgid}-{prog}")
        finally:
            os.close(fd)

    def release_cgroup(self, cgroup_path: str) -> bool:
        cgid = self._cgroup_id(cgroup_path)
        found = False
        for prog in ("connect4", "connect6"):
            pin = self._pin(f"cgroups/{cgid}-{prog}")
            if pin.exists():
                pin.unlink()
                found = True
        return found

    def quarantined(self) -> list[int]:
        d = self.pin_dir / "cgroups"
        return sorted({int(p.name.split("-")[0]) for p in d.iterdir()}) if d.exists() else []

    def _event(self, raw: bytes) -> Event:
        (ktime, cgid, pid, uid, family, proto, dport, flags, daddr,
         comm) = _CONNECT_EVENT.unpack_from(raw)
        addr = ipaddress.IPv6Address(daddr)
        shown = str(addr.ipv4_mapped) if addr.ipv4_mapped else str(addr)
        denied = bool(flags & _DENIED)
        return Event(
            ts_ns=ktime + self._offset,
            kind="connect_denied" if denied else "connect",
            severity="warning" if denied else "info",
            data={"pid": pid, "uid": uid, "comm": _cstr(comm),
                  "family": "inet6" if family == socket.AF_INET6 else "inet",
                  "proto": {6: "tcp", 17: "udp"}.get(proto, str(proto)),
                  "daddr": shown, "dport": dport, "cgroup_id": cgid})
