"""Ed25519 signature checks of the ledger, through libsodium (PyNaCl).

Verifying is what a ledger verify spends its time on: one check per record. libsodium's
``crypto_sign_open`` takes about half the CPU of OpenSSL's Ed25519 verify that
``cryptography`` calls (measured here: ~50 µs against ~96 µs a signature), and it is at
least as strict (it rejects a non-canonical ``S``, and small-order keys and ``R``), so a
signature it accepts OpenSSL accepts too. The ledger signs with libsodium too
(:class:`aegis_controller.ledger.keys.Signer`): the same deterministic signatures.

This module imports only PyNaCl and cryptography's key types, so a signature worker
(:mod:`aegis_controller.sigbatch`) that imports it starts quickly.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from nacl.bindings import crypto_sign_open
from nacl.exceptions import BadSignatureError

SIGNATURE_BYTES = 64


def raw_public(key: Ed25519PublicKey) -> bytes:
    """The key's 32 raw bytes."""
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


class Ed25519Check:
    """``ok(signature, message)`` for one public key (32 raw bytes)."""

    __slots__ = ("_public",)

    def __init__(self, public: bytes) -> None:
        if len(public) != 32:
            raise ValueError(f"an Ed25519 public key is 32 bytes, not {len(public)}")
        self._public = public

    @classmethod
    def of(cls, key: Ed25519PublicKey) -> Ed25519Check:
        return cls(raw_public(key))

    def ok(self, signature: bytes, message: bytes) -> bool:
        """Whether ``signature`` is this key's Ed25519 signature of ``message``."""
        if len(signature) != SIGNATURE_BYTES:
            return False
        try:
            crypto_sign_open(signature + message, self._public)
        except (BadSignatureError, ValueError, TypeError):
            return False
        return True
