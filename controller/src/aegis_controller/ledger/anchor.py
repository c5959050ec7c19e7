"""The anchor: a small signed JSON file outside the database naming the newest checkpoint.

A database can be cut at its tail without breaking the chain of what is left; the
anchor is what remembers how far the ledger went. It is rewritten after each checkpoint,
atomically (temporary file, fsync, rename, fsync of the directory) and monotonically: it
never moves to a lower seq, and it refuses a different hash at the same seq (a fork).
Writers from several processes are serialised by ``flock`` on ``<anchor>.lock``.

Keep a copy of the anchor off the host (or ship it to a log sink) to also catch someone
who can rewrite both the database and this file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from aegis_protocol.files import write_atomically

from .errors import AnchorError
from .keys import Signer, Verifier
from .records import canonical, now_ts

FORMAT = "aegis-ledger-anchor/1"
#: The signed head (:mod:`.head`): the same fields, its own format, so neither file can
#: stand in for the other.
HEAD_FORMAT = "aegis-ledger-head/1"
NAME = "ledger.anchor.json"
_FIELDS = {"format": str, "seq": int, "hash": str, "count": int, "ts": str, "key_id": str,
           "sig": str}


@dataclass(frozen=True)
class Anchor:
    seq: int
    hash: str
    count: int
    ts: str
    key_id: str
    sig: str
    format: str = FORMAT

    def payload(self) -> bytes:
        doc = asdict(self)
        del doc["sig"]
        return canonical(doc)

    def signature_ok(self, verifier: Verifier) -> bool:
        return verifier.anchor_ok(self.payload(), self.sig)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def make(cls, seq: int, hash_hex: str, count: int, signer: Signer,
             fmt: str = FORMAT) -> Anchor:
        unsigned = cls(seq=seq, hash=hash_hex, count=count, ts=now_ts(), key_id=signer.key_id,
                       sig="", format=fmt)
        return cls(**{**asdict(unsigned), "sig": signer.sign_anchor(unsigned.payload())})


def read_anchor(path: Path, fmt: str = FORMAT) -> Anchor | None:
    """The anchor at ``path``, or None when there is none yet. A file that exists but is
    not a well-formed anchor raises :class:`AnchorError` naming it."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as err:
        raise AnchorError(f"cannot read ledger anchor {path}: {err}") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise AnchorError(f"ledger anchor {path} is not JSON ({err})") from None
    if not isinstance(doc, dict):
        raise AnchorError(f"ledger anchor {path} is not a JSON object")
    problems = [f"{name} ({kind.__name__})" for name, kind in _FIELDS.items()
                if not isinstance(doc.get(name), kind) or isinstance(doc.get(name), bool)]
    if problems or doc["format"] != fmt or set(doc) != set(_FIELDS):
        raise AnchorError(f"ledger anchor {path} is not an {fmt} file: missing or wrong "
                          f"fields {', '.join(problems) or sorted(set(doc) ^ set(_FIELDS))}")
    return Anchor(**doc)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    lock_path = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as err:
        raise AnchorError(f"cannot open anchor lock {lock_path}: {err.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def advance(path: Path, seq: int, hash_hex: str, count: int, signer: Signer,
            fmt: str = FORMAT) -> Anchor:
    """Move the anchor forward to ``seq``; return the anchor now on disk (the existing one
    when it is already at or past ``seq``)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as err:
        raise AnchorError(f"cannot create directory {path.parent}: {err.strerror}") from None
    with _locked(path):
        try:
            current = read_anchor(path, fmt)
        except AnchorError as err:
            raise AnchorError(f"{err}; run `aegis-controller ledger verify`, and if the ledger "
                              "verifies, move the file aside and run "
                              "`aegis-controller ledger checkpoint`") from None
        if current is not None:
            if not current.signature_ok(signer.verifier):
                raise AnchorError(
                    f"ledger anchor {path} does not carry a valid signature of this ledger key: "
                    "run `aegis-controller ledger verify`; if the ledger verifies, move the "
                    "anchor aside and run `aegis-controller ledger checkpoint`")
            if current.seq > seq:
                return current
            if current.seq == seq:
                if current.hash != hash_hex:
                    raise AnchorError(f"ledger anchor {path} names seq {seq} with hash "
                                      f"{current.hash[:16]}..., not {hash_hex[:16]}...: the "
                                      "ledger was rewritten; run `aegis-controller ledger verify`")
                return current
        anchor = Anchor.make(seq, hash_hex, count, signer, fmt)
        try:
            write_atomically(path, json.dumps(anchor.to_dict(), indent=2).encode() + b"\n")
        except OSError as err:
            raise AnchorError(f"cannot write ledger anchor {path}: {err.strerror}") from None
        return anchor
