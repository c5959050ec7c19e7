"""Direct ``bpf(2)`` calls through ctypes: map lookup/update/delete, batch update, pins,
links and object info. libbpf (``libbpf.py``) loads objects; everything that works on
an fd afterwards goes through here, so a restarted process needs no object file."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
from collections.abc import Iterator
from functools import cache
from pathlib import Path

_SYS_BPF = {"x86_64": 321, "aarch64": 280, "riscv64": 280}

# enum bpf_cmd
MAP_CREATE = 0
MAP_LOOKUP_ELEM = 1
MAP_UPDATE_ELEM = 2
MAP_DELETE_ELEM = 3
MAP_GET_NEXT_KEY = 4
OBJ_PIN = 6
OBJ_GET = 7
PROG_GET_FD_BY_ID = 13
OBJ_GET_INFO_BY_FD = 15
MAP_UPDATE_BATCH = 26
LINK_CREATE = 28
LINK_UPDATE = 29
LINK_DETACH = 34

# map update flags
BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2

# enum bpf_attach_type (uapi; stable numbers)
ATTACH_CGROUP_INET4_CONNECT = 10
ATTACH_CGROUP_INET6_CONNECT = 11
ATTACH_TRACE_RAW_TP = 23
ATTACH_LSM_MAC = 27
ATTACH_XDP = 37
ATTACH_TCX_INGRESS = 46
ATTACH_TCX_EGRESS = 47

# XDP link flags
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2

# enum bpf_link_type
LINK_TYPE_XDP = 6
LINK_TYPE_TCX = 11


class BpfError(OSError):
    """A bpf() call failed; ``errno`` is the kernel's answer."""


@cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _sys_bpf() -> int:
    try:
        return _SYS_BPF[platform.machine()]
    except KeyError:
        raise BpfError(0, f"bpf() syscall number unknown for {platform.machine()}") from None


def bpf(cmd: int, attr: ctypes.Structure, what: str) -> int:
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    ret = libc.syscall(ctypes.c_long(_sys_bpf()), ctypes.c_long(cmd), ctypes.byref(attr),
                       ctypes.c_uint(ctypes.sizeof(attr)))
    if ret < 0:
        err = ctypes.get_errno()
        raise BpfError(err, f"{what}: {os.strerror(err)}")
    return int(ret)


def _addr(buf: ctypes.Array | None) -> int:
    return ctypes.addressof(buf) if buf is not None else 0


class _MapCreateAttr(ctypes.Structure):
    _fields_ = [("map_type", ctypes.c_uint32), ("key_size", ctypes.c_uint32),
                ("value_size", ctypes.c_uint32), ("max_entries", ctypes.c_uint32),
                ("map_flags", ctypes.c_uint32), ("inner_map_fd", ctypes.c_uint32),
                ("numa_node", ctypes.c_uint32), ("map_name", ctypes.c_char * 16)]


class _MapElemAttr(ctypes.Structure):
    _fields_ = [("map_fd", ctypes.c_uint32), ("_pad", ctypes.c_uint32),
                ("key", ctypes.c_uint64), ("value", ctypes.c_uint64),
                ("flags", ctypes.c_uint64)]


class _BatchAttr(ctypes.Structure):
    _fields_ = [("in_batch", ctypes.c_uint64), ("out_batch", ctypes.c_uint64),
                ("keys", ctypes.c_uint64), ("values", ctypes.c_uint64),
                ("count", ctypes.c_uint32), ("map_fd", ctypes.c_uint32),
                ("elem_flags", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


class _ObjAttr(ctypes.Structure):
    _fields_ = [("pathname", ctypes.c_uint64), ("bpf_fd", ctypes.c_uint32),
                ("file_flags", ctypes.c_uint32), ("path_fd", ctypes.c_int32)]


class _InfoAttr(ctypes.Structure):
    _fields_ = [("bpf_fd", ctypes.c_uint32), ("info_len", ctypes.c_uint32),
                ("info", ctypes.c_uint64)]


class _LinkCreateAttr(ctypes.Structure):
    _fields_ = [("prog_fd", ctypes.c_uint32), ("target_ifindex", ctypes.c_uint32),
                ("attach_type", ctypes.c_uint32), ("flags", ctypes.c_uint32),
                ("relative_fd", ctypes.c_uint32), ("_pad", ctypes.c_uint32),
                ("expected_revision", ctypes.c_uint64)]


class _LinkUpdateAttr(ctypes.Structure):
    _fields_ = [("link_fd", ctypes.c_uint32), ("new_prog_fd", ctypes.c_uint32),
                ("flags", ctypes.c_uint32), ("old_prog_fd", ctypes.c_uint32)]


class _LinkDetachAttr(ctypes.Structure):
    _fields_ = [("link_fd", ctypes.c_uint32)]


class _IdAttr(ctypes.Structure):
    _fields_ = [("id", ctypes.c_uint32), ("next_id", ctypes.c_uint32),
                ("open_flags", ctypes.c_uint32)]


class MapInfo(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32),
                ("key_size", ctypes.c_uint32), ("value_size", ctypes.c_uint32),
                ("max_entries", ctypes.c_uint32), ("map_flags", ctypes.c_uint32),
                ("name", ctypes.c_char * 16), ("_rest", ctypes.c_uint8 * 64)]


class LinkInfo(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32),
                ("prog_id", ctypes.c_uint32), ("_pad", ctypes.c_uint32),
                ("ifindex", ctypes.c_uint32), ("attach_type", ctypes.c_uint32),
                ("_rest", ctypes.c_uint8 * 64)]


class ProgInfo(ctypes.Structure):
    """The head of struct bpf_prog_info, up to and including ``name`` (offset 64)."""

    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32),
                ("tag", ctypes.c_uint8 * 8), ("jited_prog_len", ctypes.c_uint32),
                ("xlated_prog_len", ctypes.c_uint32), ("jited_prog_insns", ctypes.c_uint64),
                ("xlated_prog_insns", ctypes.c_uint64), ("load_time", ctypes.c_uint64),
                ("created_by_uid", ctypes.c_uint32), ("nr_map_ids", ctypes.c_uint32),
                ("map_ids", ctypes.c_uint64), ("name", ctypes.c_char * 16),
                ("_rest", ctypes.c_uint8 * 192)]

    @property
    def prog_name(self) -> str:
        return bytes(self.name).split(b"\0", 1)[0].decode(errors="replace")


def map_create(map_type: int, key_size: int, value_size: int, max_entries: int,
               name: str = "", flags: int = 0) -> int:
    """A new map's fd (what a loader does for a declared map; tests build other shapes)."""
    attr = _MapCreateAttr(map_type=map_type, key_size=key_size, value_size=value_size,
                          max_entries=max_entries, map_flags=flags,
                          map_name=name.encode()[:15])
    return bpf(MAP_CREATE, attr, f"map create {name}")


def map_lookup(fd: int, key: bytes, value_size: int) -> bytes | None:
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.create_string_buffer(value_size)
    attr = _MapElemAttr(map_fd=fd, key=_addr(k), value=_addr(v))
    try:
        bpf(MAP_LOOKUP_ELEM, attr, "map lookup")
    except BpfError as e:
        if e.errno == 2:  # ENOENT
            return None
        raise
    return v.raw


def map_update(fd: int, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.create_string_buffer(value, len(value))
    bpf(MAP_UPDATE_ELEM, _MapElemAttr(map_fd=fd, key=_addr(k), value=_addr(v), flags=flags),
        "map update")


def map_delete(fd: int, key: bytes) -> bool:
    """Delete one element; False when it was not there."""
    k = ctypes.create_string_buffer(key, len(key))
    try:
        bpf(MAP_DELETE_ELEM, _MapElemAttr(map_fd=fd, key=_addr(k)), "map delete")
    except BpfError as e:
        if e.errno == 2:
            return False
        raise
    return True


def map_keys(fd: int, key_size: int) -> Iterator[bytes]:
    """Every key of a hash / LPM map (a snapshot walk: concurrent deletes may skip keys)."""
    cur = None
    nxt = ctypes.create_string_buffer(key_size)
    while True:
        k = ctypes.create_string_buffer(cur, key_size) if cur is not None else None
        try:
            bpf(MAP_GET_NEXT_KEY, _MapElemAttr(map_fd=fd, key=_addr(k), value=_addr(nxt)),
                "map next key")
        except BpfError as e:
            if e.errno == 2:
                return
            raise
        cur = nxt.raw
        yield cur


def map_rows(fd: int, key_size: int, value_size: int) -> dict[bytes, bytes]:
    """Every key of a hash / LPM map with its value (keys deleted meanwhile left out)."""
    rows = {}
    for key in list(map_keys(fd, key_size)):
        raw = map_lookup(fd, key, value_size)
        if raw is not None:
            rows[key] = raw
    return rows


def map_update_batch(fd: int, keys: bytes, values: bytes, count: int,
                     flags: int = BPF_ANY) -> int:
    """Update ``count`` elements in one call (keys and values packed back to back).

    Returns how many the kernel applied (all of them unless it raised)."""
    k = ctypes.create_string_buffer(keys, len(keys))
    v = ctypes.create_string_buffer(values, len(values))
    attr = _BatchAttr(keys=_addr(k), values=_addr(v), count=count, map_fd=fd,
                      elem_flags=flags)
    bpf(MAP_UPDATE_BATCH, attr, "map batch update")
    return int(attr.count)


def obj_pin(fd: int, path: str) -> None:
    p = ctypes.create_string_buffer(os.fsencode(path))
    bpf(OBJ_PIN, _ObjAttr(pathname=_addr(p), bpf_fd=fd), f"pin {path}")


def obj_get(path: str) -> int:
    p = ctypes.create_string_buffer(os.fsencode(path))
    return bpf(OBJ_GET, _ObjAttr(pathname=_addr(p)), f"open pin {path}")


def map_info(fd: int) -> MapInfo:
    info = MapInfo()
    bpf(OBJ_GET_INFO_BY_FD, _InfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info),
                                      info=ctypes.addressof(info)), "map info")
    return info


def link_info(fd: int) -> LinkInfo:
    info = LinkInfo()
    bpf(OBJ_GET_INFO_BY_FD, _InfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info),
                                      info=ctypes.addressof(info)), "link info")
    return info


def prog_info(fd: int) -> ProgInfo:
    info = ProgInfo()
    bpf(OBJ_GET_INFO_BY_FD, _InfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info),
                                      info=ctypes.addressof(info)), "program info")
    return info


def link_create(prog_fd: int, ifindex: int, attach_type: int, flags: int = 0) -> int:
    """BPF_LINK_CREATE; ``ifindex`` is the target (an interface index, or a cgroup fd for
    cgroup attach types, 0 for tracing and LSM programs)."""
    attr = _LinkCreateAttr(prog_fd=prog_fd, target_ifindex=ifindex, attach_type=attach_type,
                           flags=flags)
    return bpf(LINK_CREATE, attr, "link create")


def link_update(fd: int, prog_fd: int) -> None:
    """Swap the program a link runs, atomically (no packet sees neither)."""
    bpf(LINK_UPDATE, _LinkUpdateAttr(link_fd=fd, new_prog_fd=prog_fd), "link update")


def link_detach(fd: int) -> None:
    bpf(LINK_DETACH, _LinkDetachAttr(link_fd=fd), "link detach")


@cache
def possible_cpus() -> int:
    """How many values a per-CPU map holds per key (the kernel's possible CPUs)."""
    text = Path("/sys/devices/system/cpu/possible").read_text().strip()
    total = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        total += int(hi or lo) - int(lo) + 1
    return total
