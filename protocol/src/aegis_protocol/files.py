"""Durable files shared by agent and controller: atomic writes and private keys made once.

- ``write_atomically``: a file is either its old or its new content, also after power loss
  (temporary file, fsync, rename, fsync of the directory).
- ``private_key``: an Ed25519 or ECDSA private key at a path, created 0600 on first use
  and checked to be of the expected kind on every load;
- ``check_private``: the one mode check of every private key file (nobody but its owner
  may read it), used by ``private_key`` and by every other loader of a private key.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:  # loaded by the key functions only: the agent's spool needs no crypto
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = ["PrivateKeyError", "check_private", "key_pem", "private_key", "write_atomically"]

K = TypeVar("K", "Ed25519PrivateKey", "ec.EllipticCurvePrivateKey")


class PrivateKeyError(ValueError):
    """A private key file that must not be used: readable by others, or not the kind of
    key expected (the message names the file and the fix)."""


def check_private(path: Path, what: str = "private key") -> None:
    """Refuse ``path`` if its group or others have any access to it."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise PrivateKeyError(f"{what} {path} is readable by others (mode {mode:04o}): run "
                              f"`chmod 600 {path}`")


def write_atomically(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to a temporary file (``mode``), fsync it, rename it over ``path``, and
    fsync the directory so the rename itself survives a crash."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """fsync a directory, so renames and new entries in it survive a crash."""
    dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def key_pem(key: Ed25519PrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    """``key`` as unencrypted PKCS#8 PEM."""
    from cryptography.hazmat.primitives import serialization
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _generate(kind: type[K]) -> K:
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    if kind is Ed25519PrivateKey:
        return Ed25519PrivateKey.generate()  # type: ignore[return-value]
    return ec.generate_private_key(ec.SECP256R1())  # type: ignore[return-value]


def private_key(path: Path, kind: type[K]) -> K:
    """The private key of ``kind`` (``Ed25519PrivateKey`` or ``ec.EllipticCurvePrivateKey``,
    made on P-256) at ``path``; created 0600 in a 0700 directory on first use, and
    refused (:class:`PrivateKeyError`) when others may read it or it is of another kind."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomically(path, key_pem(_generate(kind)), mode=0o600)
    check_private(path)
    key = serialization.load_pem_private_key(path.read_bytes(), None)
    if not isinstance(key, kind):
        what = "Ed25519" if kind is Ed25519PrivateKey else "ECDSA"
        raise PrivateKeyError(f"{path} is not an {what} private key: move it away and a new one "
                         "is made on the next start")
    return key
