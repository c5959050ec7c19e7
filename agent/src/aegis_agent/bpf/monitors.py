"""Exec and connect monitors: host-wide tracing programs whose records come out of ring
buffers, plus the two enforcement points they carry.

    execs = ExecMonitor()            # pinned under PIN_ROOT / "exec"
    execs.start()                    # {"mode": "sigkill", "reason": "..."}
    execs.deny("/usr/bin/nc")        # the next exec of that file is killed before it runs
    execs.kill_running(pid, dev, ino)  # and the process an exec event named, if still that
    reader = execs.reader(sink)      # sink(ExecRecord) once per record
    loop.add_reader(reader.fileno(), reader.drain)

    conns = ConnectMonitor()
    conns.start()
    conns.quarantine_cgroup("/sys/fs/cgroup/unified/system.slice/web.service",
                            allow=["192.0.2.10 tcp/443"])

Maps, programs and links are pinned under the monitor's directory (the lifecycle is
``pinned.PinnedObject``'s), so an agent restart finds them attached and keeps enforcing;
``stop()`` removes everything it pinned. Records are ``layout.ExecRecord`` and
``layout.ConnectRecord``; ``aegis_agent.events`` turns them into protocol events.

Exec deny runs in one of two modes, reported by ``start()``: ``lsm`` (BPF-LSM on
bprm_check_security refuses the exec with EPERM) where the kernel allows BPF-LSM, else
``sigkill`` (tp_btf/sched_process_exec sends SIGKILL, delivered before the new image's
first instruction).
"""

from __future__ import annotations

import errno
import logging
import os
import signal
from pathlib import Path
from typing import ClassVar

from . import layout, syscall
from .bpffs import ensure_bpffs
from .edges import EdgeSpecError, Peer
from .layout import MAP_CONNECT_MGMT, MAP_EXEC_DENY, ConnectRecord, ExecRecord, kernel_dev, user_dev
from .pinned import PinnedObject, in_child
from .syscall import BpfError

log = logging.getLogger(__name__)

LSM_LIST = Path("/sys/kernel/security/lsm")
PROC_PID_INIT_INO = 0xEFFFFFFC  # the inode of the initial (host) PID namespace
_ON = layout.U32.pack(1)


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


class _Monitor(PinnedObject):
    """What both monitors add to a pinned object: the PID-namespace scope, links pinned
    next to the programs, and the stats counters."""

    SCOPE_MAP: ClassVar[str] = ""
    STATS_MAP: ClassVar[str] = ""

    def __init__(self, pin_dir: str | os.PathLike | None = None,
                 object_file: str | os.PathLike | None = None, *, scope: str = "auto") -> None:
        super().__init__(pin_dir, object_file)
        self.scope = pid_scope(scope)

    def _set_scope(self) -> dict[str, object]:
        """Write the PID-namespace scope before anything is attached (see bpf/scope.h)."""
        dev, ino = self.scope or (0, 0)
        syscall.map_update(self.map_fd(self.SCOPE_MAP), bytes(4),
                           layout.SCOPE.pack(dev, ino, 1 if self.scope else 0, 0))
        return ({"pid_namespace": ino} if self.scope else {"pid_namespace": "host (all)"})

    def _link(self, prog: str, target: int, attach_type: int, pin: str) -> None:
        """Attach pinned ``prog`` with a BPF link pinned at ``pin`` (kept if alive)."""
        if self.pin(pin).exists():
            return
        prog_fd = syscall.obj_get(str(self.pin(prog)))
        try:
            link_fd = syscall.link_create(prog_fd, target, attach_type)
        finally:
            os.close(prog_fd)
        try:
            syscall.obj_pin(link_fd, str(self.pin(pin)))
        finally:
            os.close(link_fd)

    def wait(self, timeout: float) -> list:
        """Wait up to ``timeout`` seconds for records, then return them all (tools and
        tests; the agent reads through ``reader(sink)``)."""
        return self.records(timeout)

    def stats(self) -> dict[str, object]:
        return {name: self.percpu_sum(self.STATS_MAP, slot)
                for slot, name in enumerate(layout.MONITOR_STATS)}

    def stop(self) -> None:
        """Detach and unpin everything this monitor pinned."""
        self.close()
        self.remove()


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
    """Every exec on the host as a record; execs of denied files killed or refused."""

    OBJECT = "exec"
    MAPS = layout.EXEC_MAPS
    PROGRAMS = (layout.PROG_EXEC_TRACE, layout.PROG_EXEC_LSM)
    RING = layout.MAP_EXEC_EVENTS
    SCOPE_MAP = layout.MAP_EXEC_SCOPE
    STATS_MAP = layout.MAP_EXEC_STATS

    def __init__(self, pin_dir: str | os.PathLike | None = None,
                 object_file: str | os.PathLike | None = None, *, lsm: bool = True,
                 scope: str = "auto") -> None:
        super().__init__(pin_dir, object_file, scope=scope)
        self.try_lsm = lsm
        self.reason = ""

    @property
    def mode(self) -> str:
        return "lsm" if self.pin("link_exec_lsm").exists() else "sigkill"

    def start(self, *, load_apart: bool = False) -> dict[str, object]:
        """Load, pin and attach (or find it attached). Tries BPF-LSM first.
        ``load_apart``: load in a child process (``pinned.in_child``: the agent's RSS)."""
        ensure_bpffs(self.pin_dir)
        reused = self.loaded
        if not reused:
            self.reason = in_child(self._load_best) if load_apart else self._load_best()
        self.open()
        scope = self._set_scope()
        self._link(layout.PROG_EXEC_TRACE, 0, syscall.ATTACH_TRACE_RAW_TP, "link_exec_trace")
        if self.pin(layout.PROG_EXEC_LSM).exists():
            try:
                self._link(layout.PROG_EXEC_LSM, 0, syscall.ATTACH_LSM_MAC, "link_exec_lsm")
            except BpfError as e:
                self.reason = f"BPF-LSM program loaded but could not attach ({e}); using SIGKILL"
                self.pin(layout.PROG_EXEC_LSM).unlink()
        if reused and not self.reason:
            self.reason = "found attached in the pin directory"
        info = {"mode": self.mode, "reason": self.reason, "reused": reused,
                "pin_dir": str(self.pin_dir), **scope}
        log.info("exec monitor started", extra={"monitor": info})
        return info

    def _load_best(self) -> str:
        """Load with the BPF-LSM program when the kernel takes it and runs BPF-LSM hooks,
        else without it; returns why the mode is what it is."""
        no_lsm = (layout.PROG_EXEC_LSM,)
        if not self.try_lsm:
            self.load(skip=no_lsm)
            return "SIGKILL from tp_btf/sched_process_exec (BPF-LSM not tried: lsm=False)"
        try:
            self.load()
        except BpfError as e:
            first = str(e).splitlines()[0]
            self.load(skip=no_lsm)
            return f"SIGKILL from tp_btf/sched_process_exec: the kernel refused BPF-LSM ({first})"
        enabled, why = bpf_lsm_enabled()
        if enabled:
            return f"BPF-LSM on bprm_check_security: {why}"
        self.pin(layout.PROG_EXEC_LSM).unlink()
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
        return layout.EXEC_KEY.pack(kernel_dev(st.st_dev), st.st_ino), st

    def deny(self, path: str) -> None:
        """Deny executing ``path`` (its device and inode: a copy elsewhere is another file,
        a hard link is the same one)."""
        _key, st = self._key(path)
        self.deny_file(st.st_dev, st.st_ino)

    def deny_file(self, dev: int, ino: int) -> None:
        """Deny executing the file with device ``dev`` (as stat() gives it, the way exec
        events carry it) and inode ``ino``: the file the kernel ran, with no path to
        resolve again."""
        key = layout.EXEC_KEY.pack(kernel_dev(dev), ino)
        syscall.map_update(self.map_fd(MAP_EXEC_DENY), key, _ON)

    @staticmethod
    def kill_running(pid: int, dev: int, ino: int) -> tuple[bool, str]:
        """SIGKILL process ``pid`` if it still runs the file an exec event named (``dev`` as
        stat() gives it, ``ino``); returns (killed, why). The process is held by a pidfd
        while its image is checked, so an exited PID taken by another process since is
        never signalled: the pidfd still names the old one and the signal fails. A process
        gone or running another file is left alone, and the reason says which."""
        try:
            pidfd = os.pidfd_open(pid)
        except OSError as e:
            return False, _not_signalled(pid, "pidfd_open", e)
        try:
            try:
                st = os.stat(f"/proc/{pid}/exe")  # ENOENT: gone, or a zombie (no image)
            except OSError as e:
                return False, _not_signalled(pid, f"reading /proc/{pid}/exe", e)
            if (st.st_dev, st.st_ino) != (dev, ino):
                return False, (f"pid {pid} not signalled: it now runs another file (dev "
                               f"{st.st_dev} ino {st.st_ino}), not dev {dev} ino {ino}")
            try:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            except OSError as e:
                return False, _not_signalled(pid, "SIGKILL", e)
            return True, f"pid {pid} killed (SIGKILL)"
        finally:
            os.close(pidfd)

    def allow(self, path: str) -> bool:
        key, _st = self._key(path)
        return syscall.map_delete(self.map_fd(MAP_EXEC_DENY), key)

    def denied(self) -> list[dict[str, int]]:
        out = []
        for key in syscall.map_keys(self.map_fd(MAP_EXEC_DENY), layout.EXEC_KEY.size):
            kdev, ino = layout.EXEC_KEY.unpack(key)
            out.append({"dev": user_dev(kdev), "ino": ino})
        return out

    def stats(self) -> dict[str, object]:
        return {**super().stats(), "mode": self.mode}

    def decode(self, raw: bytes) -> ExecRecord:
        return ExecRecord.unpack(raw)


def _not_signalled(pid: int, step: str, e: OSError) -> str:
    """Why ``kill_running`` left ``pid`` alone after ``step`` failed with ``e``."""
    if e.errno in (errno.ESRCH, errno.ENOENT):
        return f"pid {pid} not signalled: it has exited"
    if e.errno in (errno.EACCES, errno.EPERM):
        need = "CAP_KILL" if step == "SIGKILL" else "CAP_SYS_PTRACE"
        return (f"pid {pid} not signalled: {step}: permission denied (a process of another "
                f"user, or with capabilities the agent lacks, needs {need})")
    return f"pid {pid} not signalled: {step} failed ({e.strerror})"


def _mgmt_key(spec: str) -> bytes:
    """A management destination, written as a management peer (``edges.Peer``: 'ADDRESS'
    or 'ADDRESS tcp/PORT') of one address -> the connect_mgmt key (IPv4-mapped)."""
    try:
        peer = Peer.parse(spec)
        if peer.net.prefixlen != 32:
            raise EdgeSpecError(f"{spec!r} is a network: the connect allow-list takes single "
                                "addresses")
    except EdgeSpecError as e:
        raise MonitorError(22, f"management destination {spec!r}: use 'ADDRESS' or "
                               f"'ADDRESS tcp/PORT', e.g. '192.0.2.10 tcp/22' ({e})") from None
    addr = b"\0" * 10 + b"\xff\xff" + peer.net.network_address.packed
    return layout.CONNECT_MGMT_KEY.pack(addr, peer.port)


class ConnectMonitor(_Monitor):
    """Every outbound TCP connect on the host as a record; quarantined cgroups may only
    connect to their management destinations."""

    OBJECT = "connect"
    MAPS = layout.CONNECT_MAPS
    PROGRAMS = (layout.PROG_CONNECT_TRACE, layout.PROG_CONNECT4, layout.PROG_CONNECT6)
    RING = layout.MAP_CONNECT_EVENTS
    SCOPE_MAP = layout.MAP_CONNECT_SCOPE
    STATS_MAP = layout.MAP_CONNECT_STATS

    def start(self, *, load_apart: bool = False) -> dict[str, object]:
        ensure_bpffs(self.pin_dir)
        reused = self.loaded
        if not reused:
            if load_apart:
                in_child(lambda: self.load() or "")
            else:
                self.load()
        self.open()
        scope = self._set_scope()
        self._link(layout.PROG_CONNECT_TRACE, 0, syscall.ATTACH_TRACE_RAW_TP, "link_connect_trace")
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
        fd = self.map_fd(MAP_CONNECT_MGMT)
        for old in list(syscall.map_keys(fd, layout.CONNECT_MGMT_KEY.size)):
            if old not in keys:
                syscall.map_delete(fd, old)
        for key in keys:
            syscall.map_update(fd, key, _ON)

    def quarantine_cgroup(self, cgroup_path: str, allow: list[str] | None = None,
                          expect_id: int | None = None) -> None:
        """Refuse connect() from processes in ``cgroup_path`` (and below) except to
        ``allow`` (when given, it replaces the management list); with ``expect_id``, only
        if ``cgroup_path`` is the cgroup with that id (an event's)."""
        cgid = self._cgroup_id(cgroup_path)
        if expect_id is not None and cgid != expect_id:
            raise MonitorError(2, f"{cgroup_path!r} is cgroup {cgid}, not {expect_id}: it was "
                                  "removed or replaced since the event")
        if allow is not None:
            self.set_management(allow)
        self.open()
        fd = os.open(cgroup_path, os.O_RDONLY | os.O_DIRECTORY)
        (self.pin_dir / "cgroups").mkdir(exist_ok=True)
        try:
            for prog, attach in ((layout.PROG_CONNECT4, syscall.ATTACH_CGROUP_INET4_CONNECT),
                                 (layout.PROG_CONNECT6, syscall.ATTACH_CGROUP_INET6_CONNECT)):
                self._link(prog, fd, attach, f"cgroups/{cgid}-{prog}")
        finally:
            os.close(fd)

    def release_cgroup(self, cgroup_path: str) -> bool:
        cgid = self._cgroup_id(cgroup_path)
        found = False
        for prog in (layout.PROG_CONNECT4, layout.PROG_CONNECT6):
            pin = self.pin(f"cgroups/{cgid}-{prog}")
            if pin.exists():
                pin.unlink()
                found = True
        return found

    def quarantined(self) -> list[int]:
        d = self.pin_dir / "cgroups"
        return sorted({int(p.name.split("-")[0]) for p in d.iterdir()}) if d.exists() else []

    def decode(self, raw: bytes) -> ConnectRecord:
        return ConnectRecord.unpack(raw)
