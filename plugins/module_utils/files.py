# Copyright: Aegis contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Files for the aegis.fleet modules: digests (what the golden record holds; golden_record
writes it, forensics_bundle compares with it, both computed the same way) and the one atomic
write the modules that own whole files use."""

from __future__ import annotations

import hashlib
import os
import tempfile


def sha256_file(path):
    """SHA-256 of a file, or None when it is missing or not a file."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(65536), b""):
                digest.update(block)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    return digest.hexdigest()


def write_atomic(path, data, mode, uid=None, gid=None):
    """Replace ``path`` with ``data`` (bytes): a temporary file in the same directory,
    written, fsynced, given ``mode`` (and ``uid``/``gid`` when given), then renamed over it;
    nothing is left behind on failure."""
    fd, tmp = tempfile.mkstemp(prefix=".aegis-", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if uid is not None:
            os.chown(tmp, uid, gid)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_text(path):
    """The text of ``path``, or None when there is no such file."""
    try:
        with open(path) as fh:
            return fh.read()
    except FileNotFoundError:
        return None
