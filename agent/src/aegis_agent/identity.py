"""The node's own keys, made on the node and never sent anywhere: an Ed25519 identity key
that signs attestation reports and order acknowledgments, and an ECDSA P-256 key for the
mutual-TLS client certificate (its CSR, from aegis_protocol.enrollment.node_csr, goes to
the controller; the key does not)."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


def write_private(path: Path, pem: bytes) -> None:
    """Write ``pem`` to ``path`` atomically (fsync'd, 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def key_pem(key: Ed25519PrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def identity_key(path: Path) -> Ed25519PrivateKey:
    """The node's Ed25519 identity key at ``path`` (created 0600 on first use)."""
    if not path.exists():
        write_private(path, key_pem(Ed25519PrivateKey.generate()))
    key = serialization.load_pem_private_key(path.read_bytes(), None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return key


def tls_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """The node's ECDSA P-256 TLS client key at ``path`` (created 0600 on first use)."""
    if not path.exists():
        write_private(path, key_pem(ec.generate_private_key(ec.SECP256R1())))
    key = serialization.load_pem_private_key(path.read_bytes(), None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path} is not an ECDSA private key")
    return key


def new_tls_key() -> ec.EllipticCurvePrivateKey:
    """A fresh P-256 key for a certificate rotation (saved only once the controller has
    issued its certificate)."""
    return ec.generate_private_key(ec.SECP256R1())
