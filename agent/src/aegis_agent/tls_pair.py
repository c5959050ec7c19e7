"""The node's TLS client key and certificate as one pair that is replaced atomically.

Each pair lives in its own generation directory ``tls/<n>/`` (``tls.key`` and
``node.pem``, both 0600); ``tls/current`` is a symlink to the generation in use, switched
with one rename, and ``node.pem`` and ``tls.key`` in the state directory are fixed
symlinks through it. A crash at any point leaves the old pair or the new one, never a key
beside another key's certificate. A pair written by an older agent as two plain files is
first moved into a generation of its own (both names still show that same pair
throughout).

The key for the next certificate is made once and kept (``tls-next.key``, 0600) until its
certificate is installed, so a request retried after a lost reply asks for the same key.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from aegis_protocol.files import fsync_dir, key_pem, write_atomically

from .identity import tls_key

CERT, KEY, NEXT_KEY = "node.pem", "tls.key", "tls-next.key"


def next_key(state: Path) -> ec.EllipticCurvePrivateKey:
    """The key the next certificate is asked for (made and kept 0600 on first use)."""
    return tls_key(state / NEXT_KEY)


def install(state: Path, key: ec.EllipticCurvePrivateKey, cert_pem: bytes) -> None:
    """Make ``key`` and ``cert_pem`` the node's client pair in one switch; the kept next
    key is then removed and older generations pruned."""
    if x509.load_pem_x509_certificate(cert_pem).public_key() != key.public_key():
        raise ValueError("the certificate received is not for this node's new TLS key")
    tls = state / "tls"
    tls.mkdir(mode=0o700, exist_ok=True)
    _adopt_plain_pair(state, tls)
    gen = _new_generation(tls, key_pem(key), cert_pem)
    _switch(tls, gen.name)
    _link(state)
    (state / NEXT_KEY).unlink(missing_ok=True)
    for old in tls.iterdir():
        if old.is_dir() and not old.is_symlink() and old.name != gen.name:
            shutil.rmtree(old, ignore_errors=True)


def _new_generation(tls: Path, key: bytes, cert: bytes) -> Path:
    gen = tls / str(time.time_ns())
    gen.mkdir(mode=0o700)
    write_atomically(gen / KEY, key, mode=0o600)
    write_atomically(gen / CERT, cert, mode=0o600)
    return gen


def _adopt_plain_pair(state: Path, tls: Path) -> None:
    """An older agent's two plain files become a generation; the names are relinked one
    by one, each to that same pair."""
    cert, key = state / CERT, state / KEY
    if not (cert.is_file() and not cert.is_symlink() and key.is_file()
            and not key.is_symlink()):
        return
    gen = _new_generation(tls, key.read_bytes(), cert.read_bytes())
    _switch(tls, gen.name)
    _link(state)


def _switch(tls: Path, name: str) -> None:
    tmp = tls / ".current.tmp"
    tmp.unlink(missing_ok=True)
    os.symlink(name, tmp)
    os.replace(tmp, tls / "current")
    fsync_dir(tls)


def _link(state: Path) -> None:
    for name in (CERT, KEY):
        path = state / name
        if path.is_symlink() and os.readlink(path) == f"tls/current/{name}":
            continue
        tmp = state / f".{name}.link.tmp"
        tmp.unlink(missing_ok=True)
        os.symlink(f"tls/current/{name}", tmp)
        os.replace(tmp, path)
    fsync_dir(state)

