"""The node's own keys, made on the node and never sent anywhere: an Ed25519 identity key
that signs attestation reports and order acknowledgments, and an ECDSA P-256 key for the
mutual-TLS client certificate (its CSR, from aegis_protocol.enrollment.node_csr, goes to
the controller; the key does not). Loading and creating them is
``aegis_protocol.files.private_key``'s job."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aegis_protocol.files import private_key


def identity_key(path: Path) -> Ed25519PrivateKey:
    """The node's Ed25519 identity key at ``path`` (created 0600 on first use)."""
    return private_key(path, Ed25519PrivateKey)


def tls_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """The node's ECDSA P-256 TLS client key at ``path`` (created 0600 on first use)."""
    return private_key(path, ec.EllipticCurvePrivateKey)
