"""Canonical encoding and Ed25519 signatures over protocol messages."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel


class SignatureError(ValueError):
    """A signature or key that does not verify or cannot be read."""


class NotCanonical(SignatureError):
    """A value that has no canonical form (NaN, an infinity, a non-JSON type)."""


def canonical(value: BaseModel | dict[str, Any]) -> bytes:
    """The bytes a signature covers: JSON with sorted keys, no spaces, UTF-8. Non-finite
    numbers are refused: JSON has no spelling for them (the wire would carry ``null``
    where the signature covered ``Infinity``)."""
    data = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
    try:
        return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False).encode()
    except (ValueError, TypeError) as exc:
        raise NotCanonical(f"cannot be signed: {exc} (use finite numbers, strings, "
                           "booleans, null, lists and objects only)") from None


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"not URL-safe base64: {exc}") from exc


def sign(key: Ed25519PrivateKey, value: BaseModel | dict[str, Any]) -> str:
    """Ed25519 signature of ``canonical(value)``, URL-safe base64 without padding."""
    return b64(key.sign(canonical(value)))


def verify(public: Ed25519PublicKey, value: BaseModel | dict[str, Any], signature: str) -> None:
    """Raise SignatureError unless ``signature`` is ``public``'s signature of ``value``."""
    try:
        public.verify(unb64(signature), canonical(value))
    except InvalidSignature as exc:
        raise SignatureError("signature does not verify") from exc


def public_key_text(public: Ed25519PublicKey) -> str:
    """A public key as it travels: raw 32 bytes, URL-safe base64."""
    return b64(public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def load_public_key(text: str) -> Ed25519PublicKey:
    raw = unb64(text)
    if len(raw) != 32:
        raise SignatureError(f"an Ed25519 public key is 32 bytes, got {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def key_id(public: Ed25519PublicKey) -> str:
    """Short, stable name of a public key: the first 16 hex digits of the SHA-256 of its raw
    32 bytes (the ledger's key id, too)."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]
