# Copyright: Aegis contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Whether a directory is on a memory filesystem (tmpfs, ramfs): where aegis.fleet modules
put what must never reach a disk (runtime_secret's secrets, forensics_bundle's ciphertext)."""

from __future__ import annotations

import ctypes
import os

# statfs(2) f_type of the memory filesystems (linux/magic.h).
MEMORY_FS = {0x01021994: "tmpfs", 0x858458F6: "ramfs"}


def fs_type(fd):
    """The f_type of the filesystem ``fd`` is on (fstatfs(2); ``f_type`` is the struct's first
    member, a word on every Linux ABI)."""
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on 64-bit Linux
    if libc.fstatfs(fd, buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF
