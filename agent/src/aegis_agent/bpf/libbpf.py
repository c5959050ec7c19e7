"""A thin ctypes layer over ``libbpf.so.1`` (Debian's libbpf 1.1): open and load an
object, find its programs and maps, attach tc programs through clsact (netlink), run
programs with BPF_PROG_TEST_RUN, and consume ring buffers.

libbpf's own log lines (the verifier's output on a failed load) are captured and put
into the exception, so a refused program says why.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

from .syscall import BpfError, _libc

_LOG_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_SAMPLE_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)

BPF_TC_INGRESS = 1
BPF_TC_EGRESS = 2


class LibbpfError(BpfError):
    """libbpf refused; the message carries libbpf's log (the verifier's output)."""


class TcHook(ctypes.Structure):
    _fields_ = [("sz", ctypes.c_size_t), ("ifindex", ctypes.c_int),
                ("attach_point", ctypes.c_int), ("parent", ctypes.c_uint32)]


class TcOpts(ctypes.Structure):
    _fields_ = [("sz", ctypes.c_size_t), ("prog_fd", ctypes.c_int),
                ("flags", ctypes.c_uint32), ("prog_id", ctypes.c_uint32),
                ("handle", ctypes.c_uint32), ("priority", ctypes.c_uint32)]


class TestRunOpts(ctypes.Structure):
    _fields_ = [("sz", ctypes.c_size_t),
                ("data_in", ctypes.c_void_p), ("data_out", ctypes.c_void_p),
                ("data_size_in", ctypes.c_uint32), ("data_size_out", ctypes.c_uint32),
                ("ctx_in", ctypes.c_void_p), ("ctx_out", ctypes.c_void_p),
                ("ctx_size_in", ctypes.c_uint32), ("ctx_size_out", ctypes.c_uint32),
                ("retval", ctypes.c_uint32), ("repeat", ctypes.c_int),
                ("duration", ctypes.c_uint32), ("flags", ctypes.c_uint32),
                ("cpu", ctypes.c_uint32), ("batch_size", ctypes.c_uint32)]


_log_lock = threading.Lock()
_log_lines: list[str] = []


def _on_log(level: int, fmt: bytes, args: int) -> int:
    if level > 1:  # LIBBPF_DEBUG: relocation chatter
        return 0
    buf = ctypes.create_string_buffer(4096)
    _libc().vsnprintf(buf, ctypes.c_size_t(len(buf)), fmt, ctypes.c_void_p(args))
    _log_lines.append(buf.value.decode(errors="replace").rstrip("\n"))
    del _log_lines[:-200]
    return 0


_log_cb = _LOG_FN(_on_log)


@cache
def lib() -> ctypes.CDLL:
    try:
        so = ctypes.CDLL("libbpf.so.1", use_errno=True)
    except OSError as e:
        raise LibbpfError(0, "libbpf.so.1 not found: install it (Debian: apt-get install "
                             "libbpf1, or libbpf-dev which depends on it)") from e
    p, i, u32, vp = ctypes.c_char_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_void_p
    sigs: dict[str, tuple[type | None, list]] = {
        "bpf_object__open_file": (vp, [p, vp]),
        "bpf_object__load": (i, [vp]),
        "bpf_object__close": (None, [vp]),
        "bpf_object__find_program_by_name": (vp, [vp, p]),
        "bpf_object__find_map_by_name": (vp, [vp, p]),
        "bpf_program__fd": (i, [vp]),
        "bpf_program__set_autoload": (i, [vp, ctypes.c_bool]),
        "bpf_map__fd": (i, [vp]),
        "bpf_tc_hook_create": (i, [vp]),
        "bpf_tc_hook_destroy": (i, [vp]),
        "bpf_tc_attach": (i, [vp, vp]),
        "bpf_tc_detach": (i, [vp, vp]),
        "bpf_prog_test_run_opts": (i, [i, vp]),
        "ring_buffer__new": (vp, [i, _SAMPLE_FN, vp, vp]),
        "ring_buffer__poll": (i, [vp, i]),
        "ring_buffer__consume": (i, [vp]),
        "ring_buffer__free": (None, [vp]),
        "ring_buffer__epoll_fd": (i, [vp]),
        "libbpf_set_print": (vp, [_LOG_FN]),
        "libbpf_major_version": (u32, []),
        "libbpf_minor_version": (u32, []),
    }
    for name, (res, args) in sigs.items():
        fn = getattr(so, name)
        fn.restype, fn.argtypes = res, args
    so.libbpf_set_print(_log_cb)
    return so


def version() -> str:
    return f"{lib().libbpf_major_version()}.{lib().libbpf_minor_version()}"


def _fail(what: str, err: int) -> LibbpfError:
    err = abs(err) if err else ctypes.get_errno()
    log = "\n".join(_log_lines[-40:])
    msg = f"{what}: {os.strerror(err)}"
    if log:
        msg += f"\nlibbpf log (last lines):\n{log}"
    return LibbpfError(err, msg)


@dataclass
class LoadedObject:
    """A loaded BPF object; fds stay valid until ``close()``."""

    path: str
    handle: int

    def program_fd(self, name: str) -> int:
        prog = lib().bpf_object__find_program_by_name(self.handle, name.encode())
        if not prog:
            raise LibbpfError(2, f"program {name!r} not found in {self.path}")
        return int(lib().bpf_program__fd(prog))

    def map_fd(self, name: str) -> int:
        m = lib().bpf_object__find_map_by_name(self.handle, name.encode())
        if not m:
            raise LibbpfError(2, f"map {name!r} not found in {self.path}")
        return int(lib().bpf_map__fd(m))

    def close(self) -> None:
        if self.handle:
            lib().bpf_object__close(self.handle)
            self.handle = 0


def load_object(path: str, skip: tuple[str, ...] = ()) -> LoadedObject:
    """Open and load (verify) an object, without the programs named in ``skip``; raises
    with the verifier's log on refusal."""
    with _log_lock:
        _log_lines.clear()
        ctypes.set_errno(0)
        obj = lib().bpf_object__open_file(os.fsencode(path), None)
        if not obj:
            raise _fail(f"cannot open BPF object {path}", 0)
        for name in skip:
            prog = lib().bpf_object__find_program_by_name(obj, name.encode())
            if prog:
                lib().bpf_program__set_autoload(prog, False)
        err = lib().bpf_object__load(obj)
        if err:
            e = _fail(f"the kernel refused to load {path}", err)
            lib().bpf_object__close(obj)
            raise e
    return LoadedObject(path, obj)


def tc_attach(ifindex: int, prog_fd: int, point: int) -> tuple[int, int, bool]:
    """Attach through a clsact qdisc; returns (handle, priority, created_qdisc)."""
    hook = TcHook(sz=ctypes.sizeof(TcHook), ifindex=ifindex, attach_point=point)
    err = lib().bpf_tc_hook_create(ctypes.byref(hook))
    created = err == 0
    if err and err != -17:  # EEXIST: the clsact qdisc was already there
        raise _fail(f"cannot create clsact on ifindex {ifindex}", err)
    opts = TcOpts(sz=ctypes.sizeof(TcOpts), prog_fd=prog_fd)
    err = lib().bpf_tc_attach(ctypes.byref(hook), ctypes.byref(opts))
    if err:
        if created:
            lib().bpf_tc_hook_destroy(ctypes.byref(hook))
        raise _fail(f"cannot attach tc program on ifindex {ifindex}", err)
    return int(opts.handle), int(opts.priority), created


def tc_detach(ifindex: int, point: int, handle: int, priority: int,
              destroy_hook: bool) -> None:
    hook = TcHook(sz=ctypes.sizeof(TcHook), ifindex=ifindex, attach_point=point)
    opts = TcOpts(sz=ctypes.sizeof(TcOpts), handle=handle, priority=priority)
    err = lib().bpf_tc_detach(ctypes.byref(hook), ctypes.byref(opts))
    if err and err != -2:  # ENOENT: already gone
        raise _fail(f"cannot detach tc program from ifindex {ifindex}", err)
    if destroy_hook:
        # destroying the egress hook of a clsact we created removes the qdisc
        hook.attach_point = BPF_TC_INGRESS | BPF_TC_EGRESS
        err = lib().bpf_tc_hook_destroy(ctypes.byref(hook))
        if err and err not in (-2, -22):
            raise _fail(f"cannot remove clsact from ifindex {ifindex}", err)


@dataclass(frozen=True)
class TestRun:
    retval: int
    duration_ns: int
    data_out: bytes


def test_run(prog_fd: int, data: bytes, repeat: int = 1) -> TestRun:
    """BPF_PROG_TEST_RUN: run a program on ``data``; duration is ns per repetition."""
    data_in = ctypes.create_string_buffer(data, len(data))
    out = ctypes.create_string_buffer(len(data) + 512)
    opts = TestRunOpts(sz=ctypes.sizeof(TestRunOpts),
                       data_in=ctypes.addressof(data_in), data_size_in=len(data),
                       data_out=ctypes.addressof(out), data_size_out=len(out),
                       repeat=repeat)
    err = lib().bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts))
    if err:
        raise _fail("BPF_PROG_TEST_RUN failed", err)
    return TestRun(int(opts.retval), int(opts.duration), out.raw[:opts.data_size_out])


class RingBuffer:
    """libbpf's ring buffer consumer over one map fd; ``poll`` hands raw records to
    ``on_record``."""

    def __init__(self, map_fd: int, on_record: Callable[[bytes], None]) -> None:
        def sample(_ctx: int, data: int, size: int) -> int:
            on_record(ctypes.string_at(data, size))
            return 0

        self._cb = _SAMPLE_FN(sample)  # keep a reference while libbpf holds it
        self._rb = lib().ring_buffer__new(map_fd, self._cb, None, None)
        if not self._rb:
            raise _fail("ring_buffer__new failed", 0)

    def poll(self, timeout_ms: int) -> int:
        n = lib().ring_buffer__poll(self._rb, timeout_ms)
        if n < 0 and n != -4:  # EINTR
            raise _fail("ring_buffer__poll failed", n)
        return max(n, 0)

    def fileno(self) -> int:
        """The ring buffer's epoll fd: readable when records are waiting (asyncio
        ``loop.add_reader``)."""
        return int(lib().ring_buffer__epoll_fd(self._rb))

    def consume(self) -> int:
        n = lib().ring_buffer__consume(self._rb)
        if n < 0:
            raise _fail("ring_buffer__consume failed", n)
        return n

    def close(self) -> None:
        if self._rb:
            lib().ring_buffer__free(self._rb)
            self._rb = None
