"""Secret files on tmpfs: where they may be written, how they are written and wiped.

- :func:`check_tmpfs`: the directory must be a tmpfs or ramfs mount point's tree (read
  from ``/proc/self/mountinfo``): a secret never reaches a disk, a swap-free memory
  filesystem is the only place it may live.
- :func:`write_secret`: a temporary file in the same directory, its owner and mode set
  *before* any byte of content, fsync, rename over the name; the replaced file's content
  is then overwritten with zeros (a consumer that opened it reads the new file next time).
- :func:`wipe_file`: overwrite with zeros, fsync, unlink.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import stat
from pathlib import Path

MEMORY_FS = ("tmpfs", "ramfs")
TMP_PREFIX = ".aegis-secret."


class SinkDirError(RuntimeError):
    """The sink's directory is missing or not on tmpfs (the message says how to fix it)."""


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    out, i = "", 0
    while i < len(field):
        code = field[i + 1:i + 4]
        if field[i] == "\\" and len(code) == 3 and code.isdigit():
            out += chr(int(code, 8))
            i += 4
        else:
            out += field[i]
            i += 1
    return out


def filesystem_of(path: Path, mountinfo: Path = Path("/proc/self/mountinfo")) -> str:
    """The filesystem type of the mount ``path`` lives on (the last-mounted longest prefix)."""
    real = os.path.realpath(path)
    best, fstype = "", ""
    for line in mountinfo.read_text().splitlines():
        fields = line.split()
        try:
            point = _unescape(fields[4])
            sep = fields.index("-")
        except (IndexError, ValueError):
            continue
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, fstype = point, fields[sep + 1]
    return fstype


def check_tmpfs(path: Path) -> None:
    """Raise SinkDirError unless ``path`` is a directory on tmpfs or ramfs."""
    if not path.is_dir():
        raise SinkDirError(f"secrets.dir {path} does not exist: mount a tmpfs there (the "
                           "aegis.fleet.agent role's run-aegis-secrets.mount does), e.g. "
                           f"`mount -t tmpfs -o mode=0711,noexec,nosuid,nodev,size=1m tmpfs "
                           f"{path}`")
    fstype = filesystem_of(path)
    if fstype not in MEMORY_FS:
        raise SinkDirError(f"secrets.dir {path} is on {fstype or 'an unknown filesystem'}, not "
                           "tmpfs: secrets are written only to memory; mount a tmpfs there, "
                           f"e.g. `mount -t tmpfs -o mode=0711,noexec,nosuid,nodev,size=1m "
                           f"tmpfs {path}`")


def ids(owner: str | int, group: str | int) -> tuple[int, int]:
    """uid and gid of a name or number (KeyError names what is unknown)."""
    try:
        uid = owner if isinstance(owner, int) else pwd.getpwnam(owner).pw_uid
    except KeyError:
        raise KeyError(f"no user {owner!r} on this node") from None
    try:
        gid = group if isinstance(group, int) else grp.getgrnam(group).gr_gid
    except KeyError:
        raise KeyError(f"no group {group!r} on this node") from None
    return uid, gid


def _zero(fd: int) -> None:
    size = os.fstat(fd).st_size
    os.lseek(fd, 0, os.SEEK_SET)
    block = b"\0" * 65536
    while size > 0:
        size -= os.write(fd, block[:min(size, len(block))])
    os.fsync(fd)


def write_secret(directory: Path, name: str, content: bytes, uid: int, gid: int,
                 mode: int) -> None:
    """Replace ``directory/name`` with ``content`` atomically (see the module doc).

    Mode first (the file is still the agent's), then owner (CAP_CHOWN), then content."""
    target = directory / name
    tmp = directory / f"{TMP_PREFIX}{name}.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, mode)
        os.fchown(fd, uid, gid)
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    os.close(fd)
    # the replaced content: kept by a second name until the new file is in place, then
    # overwritten (a consumer that has it open reads zeros, the path gives the new file)
    old = directory / f"{TMP_PREFIX}{name}.{os.getpid()}.old"
    try:
        os.link(target, old, follow_symlinks=False)
    except FileNotFoundError:
        old = None  # type: ignore[assignment]
    os.replace(tmp, target)
    if old is not None:
        wipe_file(old)


def wipe_file(path: Path) -> bool:
    """Overwrite ``path`` with zeros, fsync, unlink; False when there was no file.

    A consumer's 0400 file is taken back first: owner the agent (CAP_CHOWN), mode 0600.
    The agent runs without CAP_DAC_OVERRIDE, so making it writable for its owner while it
    still belongs to the consumer would give the *consumer* write access and leave the
    agent unable to open it. Anything but a regular file is only unlinked."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISREG(st.st_mode):
        os.chown(path, os.geteuid(), os.getegid(), follow_symlinks=False)
        os.chmod(path, 0o600, follow_symlinks=False)
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
        try:
            _zero(fd)
        finally:
            os.close(fd)
    path.unlink(missing_ok=True)
    return True


def wipe_leftovers(directory: Path) -> None:
    """Remove temporary files an interrupted write left behind."""
    with contextlib.suppress(OSError):
        for p in directory.glob(f"{TMP_PREFIX}*"):
            wipe_file(p)
