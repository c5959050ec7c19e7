"""The controller's ledger key: Ed25519, private half in a 0600 PEM file, public half
exportable so that anyone holding only ``ledger.pub`` can verify the ledger.

What is signed (each message starts with its own domain tag, so a record signature can
never be replayed as an anchor signature or the other way round):

* a record: ``b"aegis-ledger-record/1\\0" + bytes.fromhex(record.hash)``
* the anchor: ``b"aegis-ledger-anchor/1\\0" + canonical(anchor fields except sig)``

Signatures and hashes are stored as lowercase hex.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from nacl.bindings import crypto_sign, crypto_sign_seed_keypair

from aegis_protocol.files import PrivateKeyError, check_private, key_pem, write_atomically
from aegis_protocol.signing import key_id

from ..sigcheck import SIGNATURE_BYTES, Ed25519Check
from .errors import KeyFileError

PRIVATE_NAME = "ledger.key"
PUBLIC_NAME = "ledger.pub"
RECORD_TAG = b"aegis-ledger-record/1\0"
ANCHOR_TAG = b"aegis-ledger-anchor/1\0"
_INIT_HINT = "run `aegis-controller keys init` (once per controller)"


@dataclass(frozen=True)
class Verifier:
    """Checks record and anchor signatures with the public key only."""

    public: Ed25519PublicKey

    @property
    def key_id(self) -> str:
        return key_id(self.public)

    def _ok(self, sig_hex: str, message: bytes) -> bool:
        try:
            signature = bytes.fromhex(sig_hex)
        except (ValueError, TypeError):
            return False
        return self._check.ok(signature, message)

    @cached_property
    def _check(self) -> Ed25519Check:
        return Ed25519Check.of(self.public)

    def record_ok(self, hash_hex: str, sig_hex: str) -> bool:
        try:
            digest = bytes.fromhex(hash_hex)
        except (ValueError, TypeError):
            return False
        return self._ok(sig_hex, RECORD_TAG + digest)

    def anchor_ok(self, payload: bytes, sig_hex: str) -> bool:
        return self._ok(sig_hex, ANCHOR_TAG + payload)

    def public_pem(self) -> str:
        return self.public.public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo).decode()


@dataclass(frozen=True)
class Signer:
    """The private ledger key; only the controller holds it."""

    private: Ed25519PrivateKey

    @property
    def verifier(self) -> Verifier:
        return Verifier(self.private.public_key())

    @property
    def key_id(self) -> str:
        return key_id(self.private.public_key())

    @cached_property
    def _secret(self) -> bytes:
        """The key in libsodium's form (seed + public half), made once."""
        seed = self.private.private_bytes(serialization.Encoding.Raw,
                                          serialization.PrivateFormat.Raw,
                                          serialization.NoEncryption())
        return crypto_sign_seed_keypair(seed)[1]

    def _sign(self, message: bytes) -> bytes:
        # libsodium's Ed25519: the same signature OpenSSL's would be (RFC 8032 signing is
        # deterministic), in about 60 % of the CPU here; every record is signed with it
        return crypto_sign(message, self._secret)[:SIGNATURE_BYTES]

    def sign_record(self, hash_hex: str) -> str:
        return self._sign(RECORD_TAG + bytes.fromhex(hash_hex)).hex()

    def sign_anchor(self, payload: bytes) -> str:
        return self._sign(ANCHOR_TAG + payload).hex()


def init_keys(key_dir: Path, *, force: bool = False) -> tuple[Path, Path, str]:
    """Create ``ledger.key`` (0600) and ``ledger.pub`` in ``key_dir``; refuse to replace a
    key unless ``force`` (records signed by the old key would no longer verify)."""
    private_path, public_path = key_dir / PRIVATE_NAME, key_dir / PUBLIC_NAME
    if private_path.exists() and not force:
        raise KeyFileError(
            f"a ledger key already exists at {private_path}: keep it (records signed by it "
            "verify only with its public key); to start a new ledger with a new key, move "
            "the old key, database and anchor aside or pass --force")
    key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    private = Ed25519PrivateKey.generate()
    write_atomically(private_path, key_pem(private), mode=0o600)
    public_path.write_text(Verifier(private.public_key()).public_pem())
    public_path.chmod(0o644)
    return private_path, public_path, key_id(private.public_key())


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"no {what} at {path}: {_INIT_HINT}, or point --state-dir at the "
                           "controller's state directory") from None
    except OSError as err:
        raise KeyFileError(f"cannot read {what} {path}: {err.strerror}") from None


def load_signer(path: Path) -> Signer:
    data = _read(path, "ledger private key")
    try:
        check_private(path, "ledger private key")
    except PrivateKeyError as err:
        raise KeyFileError(str(err)) from None
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as err:
        raise KeyFileError(f"{path} is not an unencrypted PEM private key ({err}); "
                           f"restore it from backup or {_INIT_HINT} for a new ledger") from None
    if not isinstance(private, Ed25519PrivateKey):
        raise KeyFileError(f"{path} holds a {type(private).__name__}, not an Ed25519 key")
    return Signer(private)


def load_verifier(path: Path) -> Verifier:
    data = _read(path, "ledger public key")
    try:
        public = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as err:
        raise KeyFileError(f"{path} is not a PEM public key ({err}); export it again with "
                           "`aegis-controller keys public`") from None
    if not isinstance(public, Ed25519PublicKey):
        raise KeyFileError(f"{path} holds a {type(public).__name__}, not an Ed25519 key")
    return Verifier(public)
