"""What a ledger record is, how it is encoded, hashed and checked on the way in.

A record's ``hash`` is SHA-256 over the canonical encoding of every other field but
``sig``: JSON with sorted keys, no whitespace, UTF-8 (not ASCII-escaped), no NaN or
Infinity. ``prev_hash`` is in it, so each record commits to the whole chain before it;
the first record's ``prev_hash`` is :data:`GENESIS` (64 zeros). A verifier in another
language needs only this paragraph, :mod:`.keys` (how ``sig`` is made) and the public key.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from .errors import LedgerInputError

GENESIS = "0" * 64

#: Largest canonical body accepted. Bulky evidence (forensics, playbook output) belongs in
#: files; the record carries their SHA-256 and location.
MAX_BODY_BYTES = 256 * 1024
MAX_NAME = 255


class Kind(StrEnum):
    ENROLLMENT = "enrollment"
    ATTESTATION = "attestation"
    STATE_CHANGE = "state_change"
    ORDER = "order"
    ACK = "ack"
    PLAYBOOK_RUN = "playbook_run"
    REBUILD = "rebuild"
    ACCESS_GRANT = "access_grant"
    SECRET_LEASE = "secret_lease"  # noqa: S105  (a kind of record, not a secret)
    TOKEN_REFUSED = "token_refused"  # noqa: S105
    KEY_ROTATION = "key_rotation"
    CHECKPOINT = "checkpoint"


#: Kinds a caller may append; checkpoints are written only by the ledger itself.
APPENDABLE = tuple(k.value for k in Kind if k is not Kind.CHECKPOINT)


def canonical(value: Any) -> bytes:
    """The one byte encoding that hashes are computed over."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def now_ts() -> str:
    """Current UTC time, RFC 3339 with milliseconds: ``2025-11-23T01:02:03.456Z``."""
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


def record_hash(seq: int, ts: str, kind: str, subject: str, actor: str,
                body: Mapping[str, Any], prev_hash: str) -> str:
    doc = {"seq": seq, "ts": ts, "kind": kind, "subject": subject, "actor": actor,
           "body": body, "prev_hash": prev_hash}
    return hashlib.sha256(canonical(doc)).hexdigest()


_encode_str = json.encoder.encode_basestring  # what canonical() does to a str


def stored_record_hash(seq: int, ts: str, kind: str, subject: str, actor: str,
                       body_json: str, prev_hash: str) -> str:
    """:func:`record_hash` of a stored record from its body *text*, without decoding and
    re-encoding it: the same digest whenever ``body_json`` is the canonical encoding of a
    JSON object (every appended body is). For any other text (a body re-encoded by hand,
    or edited) the digest differs from the stored hash, and the caller falls back to
    :func:`record_hash` over the decoded body."""
    if type(seq) is not int or not all(type(v) is str for v in (ts, kind, subject, actor,
                                                                  body_json, prev_hash)):
        return ""  # a column rewritten with another type (SQLite allows it): not canonical
    enc = _encode_str
    return hashlib.sha256(
        ('{"actor":' + enc(actor) + ',"body":' + body_json + ',"kind":' + enc(kind)
         + ',"prev_hash":' + enc(prev_hash) + ',"seq":' + str(seq) + ',"subject":'
         + enc(subject) + ',"ts":' + enc(ts) + "}").encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Record:
    seq: int
    ts: str
    kind: str
    subject: str
    actor: str
    body: dict[str, Any]
    prev_hash: str
    hash: str
    sig: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Entry:
    """What a caller asks to append: checked, with its body already canonically encoded."""

    kind: str
    subject: str
    actor: str
    body: dict[str, Any]
    body_json: str


def check_entry(kind: str, subject: str, body: object, actor: str) -> Entry:
    """Validate one entry; every refusal says what was wrong and what is accepted."""
    if kind == Kind.CHECKPOINT:
        raise LedgerInputError("kind 'checkpoint' is written by the ledger itself: use "
                               "`aegis-controller ledger checkpoint` (Ledger.checkpoint())")
    if kind not in APPENDABLE:
        raise LedgerInputError(f"unknown record kind {kind!r}: use one of "
                               f"{', '.join(APPENDABLE)}")
    for name, value, empty_ok in (("subject", subject, True), ("actor", actor, False)):
        if not isinstance(value, str):
            raise LedgerInputError(f"{name} must be a string, got {type(value).__name__}")
        if not empty_ok and not value:
            raise LedgerInputError(f"{name} must not be empty (who did it, e.g. "
                                   "'controller' or 'operator:alice')")
        if len(value) > MAX_NAME or any(ord(c) < 32 for c in value):
            raise LedgerInputError(f"{name} {value[:40]!r}... must be at most {MAX_NAME} "
                                   "characters without control characters")
    if not isinstance(body, Mapping):
        raise LedgerInputError(f"body must be a JSON object ({{...}}), got "
                               f"{type(body).__name__}: wrap the value, e.g. "
                               '{"value": ...}')
    if not all(isinstance(k, str) for k in body):
        raise LedgerInputError("body keys must be strings")
    try:
        encoded = canonical(dict(body))
    except (TypeError, ValueError) as err:
        raise LedgerInputError(f"body cannot be encoded as JSON ({err}); use strings, "
                               "numbers, booleans, null, lists and objects only") from None
    if len(encoded) > MAX_BODY_BYTES:
        raise LedgerInputError(f"body is {len(encoded)} bytes, more than {MAX_BODY_BYTES}: "
                               "store bulky evidence in a file and record its SHA-256 and path")
    text = encoded.decode("utf-8")
    # Stored and hashed as what JSON gives back, so a reader sees exactly what was signed.
    return Entry(kind=str(kind), subject=subject, actor=actor, body=json.loads(text),
                 body_json=text)


def parse_body(text: str) -> dict[str, Any]:
    """Decode a stored body; raises ValueError when it is not a JSON object."""
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError(f"body is a JSON {type(value).__name__}, not an object")
    return value
