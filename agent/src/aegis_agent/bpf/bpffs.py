"""The BPF filesystem: where pins live. Mounted at /sys/fs/bpf when missing (this
machine's kernel does not mount it by default)."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from .syscall import BpfError, _libc

BPFFS = Path("/sys/fs/bpf")
PIN_ROOT = BPFFS / "aegis"


def bpffs_mounts() -> list[Path]:
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if right.split(" ", 1)[0] == "bpf":
            found.append(Path(left.split()[4]))
    return found


def ensure_bpffs(path: Path = BPFFS) -> None:
    """Make sure ``path`` is on a bpffs; mount one at /sys/fs/bpf when none is."""
    mounts = bpffs_mounts()
    if any(path == m or m in path.parents for m in mounts):
        return
    if path != BPFFS and BPFFS not in path.parents:
        raise BpfError(0, f"{path} is not on a BPF filesystem; put pins under {BPFFS} "
                          f"or mount bpffs there first (mount -t bpf bpf {path})")
    libc = _libc()
    if libc.mount(b"bpf", os.fsencode(BPFFS), b"bpf", ctypes.c_ulong(0), b"mode=0700") != 0:
        err = ctypes.get_errno()
        raise BpfError(err, f"cannot mount bpffs at {BPFFS}: {os.strerror(err)} "
                            "(needs CAP_SYS_ADMIN)")
