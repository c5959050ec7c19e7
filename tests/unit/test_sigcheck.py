"""The ledger's Ed25519 check through libsodium: the same verdicts as cryptography's
(OpenSSL) verify on the cases that matter, and no weaker."""

from __future__ import annotations

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aegis_controller.sigbatch import first_bad
from aegis_controller.sigcheck import Ed25519Check

# the order of the Ed25519 base point: S and S + L are the same scalar
L = 2**252 + 27742317777372353535851937790883648493


def _openssl_ok(key, signature: bytes, message: bytes) -> bool:
    try:
        key.public_key().verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def _malleated(signature: bytes) -> bytes:
    """The same signature with S + L: accepted by a verifier that skips the S < L check."""
    s = int.from_bytes(signature[32:], "little") + L
    return signature[:32] + s.to_bytes(32, "little")


def test_good_and_bad_signatures_get_the_verdicts_openssl_gives() -> None:
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    check = Ed25519Check.of(key.public_key())
    message = b"aegis-ledger-record/1\0" + bytes(range(32))
    good = key.sign(message)
    cases = {
        "good": (good, message, True),
        "message changed": (good, message[:-1] + b"\1", False),
        "other key's signature": (other.sign(message), message, False),
        "63 bytes": (good[:63], message, False),
        "65 bytes": (good + b"\0", message, False),
        "empty": (b"", message, False),
        "all zero": (bytes(64), message, False),
        "S + L (malleated)": (_malleated(good), message, False),
    }
    for name, (signature, signed, expected) in cases.items():
        assert check.ok(signature, signed) is expected, name
        assert _openssl_ok(key, signature, signed) is expected, name


def test_a_public_key_that_is_not_32_bytes_is_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes, not 31"):
        Ed25519Check(bytes(31))


def test_the_workers_check_names_the_first_bad_item() -> None:
    key = Ed25519PrivateKey.generate()
    check = Ed25519Check.of(key.public_key())
    prefix = b"p"
    digests = [bytes([i]) * 32 for i in range(4)]
    items = [(i, d.hex(), key.sign(prefix + d).hex()) for i, d in enumerate(digests)]
    assert first_bad(check, prefix, items) is None
    items[2] = (2, items[2][1], "zz")  # not hex
    items[3] = (3, items[3][1], items[0][2])  # another record's signature
    assert first_bad(check, prefix, items) == 2
    assert first_bad(check, prefix, items[3:]) == 3


def test_the_ledger_signs_with_libsodium_exactly_as_openssl_would() -> None:
    """Ed25519 signing is deterministic: the signer's libsodium signatures are byte for byte
    OpenSSL's, for records and anchors, and both verifiers accept them."""
    from aegis_controller.ledger.keys import ANCHOR_TAG, RECORD_TAG, Signer

    key = Ed25519PrivateKey.generate()
    signer = Signer(key)
    for i in range(50):
        digest = bytes([i]) * 32
        sig = bytes.fromhex(signer.sign_record(digest.hex()))
        assert sig == key.sign(RECORD_TAG + digest)
        assert signer.verifier.record_ok(digest.hex(), sig.hex())
        payload = f'{{"seq": {i}}}'.encode()
        assert bytes.fromhex(signer.sign_anchor(payload)) == key.sign(ANCHOR_TAG + payload)
    assert not signer.verifier.record_ok((b"\x01" * 32).hex(), signer.sign_record("00" * 32))
