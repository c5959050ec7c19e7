"""Verify a ledger end to end and name the first bad record.

The rows are streamed in seq order from one read transaction. For each row, in order:

1. its seq follows the previous one (else **deleted**: the first missing seq);
2. its content hashes to its stored ``hash`` — if not, and its ``prev_hash`` does not
   link to the previous record either, the record was moved here (**reordered**),
   otherwise it was changed in place (**edited**);
3. its ``prev_hash`` is the previous record's hash (else **reordered**);
4. its signature verifies with the ledger's public key (else **bad_signature**);
5. a checkpoint names exactly the head it follows (else **checkpoint_mismatch**).

Then the anchor: its signature (**anchor_bad_signature**; unreadable: **anchor_invalid**),
whether the database still reaches it (**truncated**), whether the record it names has
its hash (**anchor_mismatch**), and whether it is older than the newest checkpoint in
the database (**anchor_rollback**). A ledger with checkpoints but no anchor file fails
with **anchor_missing**. The signed head (:mod:`.head`), when there is one, is checked
the same way (its signature, that the database reaches it, its hash). Records after the
newer of the two are the **unanchored** tail: :attr:`VerifyResult.unanchored` counts them
(deleting them cannot be detected; sealing keeps them younger than its interval). Only the
public key is needed.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aegis_controller.sigbatch import SignaturePool, default_workers

from .anchor import FORMAT, HEAD_FORMAT, Anchor, read_anchor
from .errors import AnchorError
from .head import head_path
from .keys import RECORD_TAG, Verifier
from .records import GENESIS, Kind, parse_body, record_hash, stored_record_hash

if TYPE_CHECKING:
    from .store import Ledger

log = logging.getLogger(__name__)


class Problem(StrEnum):
    EDITED = "edited"
    BAD_SIGNATURE = "bad_signature"
    DELETED = "deleted"
    REORDERED = "reordered"
    TRUNCATED = "truncated"
    CHECKPOINT_MISMATCH = "checkpoint_mismatch"
    ANCHOR_INVALID = "anchor_invalid"
    ANCHOR_BAD_SIGNATURE = "anchor_bad_signature"
    ANCHOR_MISSING = "anchor_missing"
    ANCHOR_MISMATCH = "anchor_mismatch"
    ANCHOR_ROLLBACK = "anchor_rollback"


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    #: Records read and found good (all of them when ok).
    count: int
    #: ``{"seq", "hash"}`` of the last good record, None for an empty ledger.
    head: dict[str, Any] | None
    checkpoints: int
    anchor: dict[str, Any] | None
    key_id: str
    first_bad_seq: int | None = None
    #: The signed head file (``{"path", "seq", "hash", "ts"}``), None when there is none.
    signed_head: dict[str, Any] | None = None
    #: Records after the last signed head or anchor: nothing outside the database covers
    #: them, so their deletion could not be detected.
    unanchored: int = 0
    problem: Problem | None = None
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["problem"] = self.problem.value if self.problem else None
        return doc


class _Failed(Exception):
    def __init__(self, problem: Problem, seq: int | None, detail: str) -> None:
        super().__init__(detail)
        self.problem, self.seq, self.detail = problem, seq, detail


def _check_checkpoint(seq: int, body: dict[str, Any], prev_hash: str) -> None:
    expected = {"head_seq": seq - 1, "head_hash": prev_hash, "count": seq - 1}
    wrong = {k: body.get(k) for k, v in expected.items() if body.get(k) != v}
    if wrong:
        raise _Failed(Problem.CHECKPOINT_MISMATCH, seq,
                      f"checkpoint {seq} claims {wrong} but follows seq {seq - 1} "
                      f"(hash {prev_hash[:16]}...)")


#: Records checked in this process alone before signature workers start for the rest: a
#: ledger this small is verified before the workers would be up.
PARALLEL_AFTER = 5000
#: Signatures per chunk handed to a worker.
SIGNATURE_CHUNK = 1000


class _LaterBadSignature(Exception):
    """A worker found a bad signature in a chunk the walk has already passed."""


def verify(ledger: Ledger, verifier: Verifier, *, batch: int = 2000,
           workers: int | None = None, parallel_after: int = PARALLEL_AFTER) -> VerifyResult:
    """Check every record and the anchor; stop at the first problem.

    Past ``parallel_after`` records the Ed25519 signatures are checked by ``workers``
    processes (default: one per CPU; 0 or 1: all in this process) while this process
    checks seqs, hashes, links and checkpoints in order. Should a worker find a bad
    signature, the ledger is walked again in this process alone, so the result (the first
    bad record, the count and head before it) is exactly the sequential one."""
    workers = default_workers() if workers is None else workers
    walk = _Walk(ledger.anchor_path, verifier)
    pool: SignaturePool | None = None
    # A ledger known to be long starts its workers before the first row: they start up
    # while this process walks, instead of leaving the first records to one core.
    start_at = parallel_after
    if workers > 1 and parallel_after > 0:
        head = ledger.head()
        if head is not None and head.seq > parallel_after:
            start_at = 0
    try:
        try:
            with contextlib.closing(ledger.rows(batch=batch)) as rows:
                for row in rows:
                    if pool is None and workers > 1 and walk.count == start_at:
                        pool = _start_pool(verifier, workers)
                        if pool is not None:
                            walk.signature = _deferred(pool)
                    walk.row(row)
            if pool is not None and _rewalk(pool):
                raise _LaterBadSignature
            walk.anchor_checks()
        except _Failed as failure:
            if pool is not None and _rewalk(pool):
                raise _LaterBadSignature from None
            return walk.result(failure)
    except _LaterBadSignature:
        if pool is not None:
            pool.close()
            pool = None
        return verify(ledger, verifier, batch=batch, workers=0)
    finally:
        if pool is not None:
            pool.close()
    return walk.result()


def _start_pool(verifier: Verifier, workers: int) -> SignaturePool | None:
    """Signature workers, or None (go on in this process) when they cannot be started."""
    try:
        return SignaturePool(verifier.public, RECORD_TAG, workers=workers,
                             chunk=SIGNATURE_CHUNK)
    except OSError as err:
        log.warning("ledger verify: signature workers not started (%s); checking them here",
                    err)
        return None


def _rewalk(pool: SignaturePool) -> bool:
    """Wait for the workers: must the ledger be walked again in this process (a bad
    signature was found, or a worker failed and its chunk counts as unchecked)?"""
    try:
        return pool.finish() is not None
    except RuntimeError as err:
        log.warning("ledger verify: %s; checking every signature here", err)
        return True


def _deferred(pool: SignaturePool) -> Callable[[int, str, str], None]:
    def check(seq: int, digest: str, sig: str) -> None:
        if pool.add(seq, digest, sig) is not None:
            raise _LaterBadSignature
    return check


class _Walk:
    """State of one verification: the last good record, checkpoints seen, the anchor."""

    def __init__(self, path: Path | None, verifier: Verifier) -> None:
        self.path, self.verifier = path, verifier
        self.seq, self.hash, self.count, self.checkpoints = 0, GENESIS, 0, 0
        self.last_checkpoint: tuple[int, str] | None = None
        self.anchor: Anchor | None = None
        self.signed_head: Anchor | None = None
        self.head_path = None if path is None else head_path(path)
        #: seq -> hash of the records the anchor and the signed head name, as stored.
        self.seen: dict[int, str] = {}
        self.mark_failure: _Failed | None = None
        #: checks one record's signature (here, or hands it to worker processes)
        self.signature: Callable[[int, str, str], None] = self._signature_here
        # Read before the rows: a writer moves the anchor (and the head) only after
        # committing, so every record they name is in the snapshot read next.
        if path is not None:
            self.anchor = self._load(path, "anchor", FORMAT)
        if self.head_path is not None:
            self.signed_head = self._load(self.head_path, "signed head", HEAD_FORMAT)
        #: the seqs the anchor and the signed head name
        self.marks = {m.seq for m in (self.anchor, self.signed_head) if m is not None}

    def _load(self, path: Path, what: str, fmt: str) -> Anchor | None:
        try:
            mark = read_anchor(path, fmt)
        except AnchorError as err:
            self.mark_failure = self.mark_failure or _Failed(Problem.ANCHOR_INVALID, None,
                                                             str(err))
            return None
        if mark is not None and not mark.signature_ok(self.verifier):
            self.mark_failure = self.mark_failure or _Failed(
                Problem.ANCHOR_BAD_SIGNATURE, None,
                f"ledger {what} {path} is not signed by key {self.verifier.key_id} (it claims "
                f"key {mark.key_id}): it was edited or replaced")
        return mark

    def _covered(self) -> int:
        return max([m.seq for m in (self.anchor, self.signed_head) if m is not None],
                   default=0)

    def result(self, failure: _Failed | None = None) -> VerifyResult:
        anchor, head = self.anchor, self.signed_head
        return VerifyResult(
            ok=failure is None, count=self.count,
            head={"seq": self.seq, "hash": self.hash} if self.seq else None,
            checkpoints=self.checkpoints,
            anchor=None if anchor is None else {"path": str(self.path), "seq": anchor.seq,
                                                 "hash": anchor.hash, "ts": anchor.ts},
            key_id=self.verifier.key_id,
            first_bad_seq=failure.seq if failure else None,
            problem=failure.problem if failure else None,
            detail=failure.detail if failure else "",
            signed_head=None if head is None else {"path": str(self.head_path), "seq": head.seq,
                                                   "hash": head.hash, "ts": head.ts},
            unanchored=max(0, self.seq - self._covered()))

    def row(self, row: Any) -> None:
        seq, prev_seq, prev_hash = row.seq, self.seq, self.hash
        if seq != prev_seq + 1:
            missing = (f"record {prev_seq + 1} is" if seq == prev_seq + 2 else
                       f"records {prev_seq + 1} to {seq - 1} are")
            raise _Failed(Problem.DELETED, prev_seq + 1,
                          f"{missing} missing: seq jumps from {prev_seq} to {seq}")
        computed = stored_record_hash(seq, row.ts, row.kind, row.subject, row.actor, row.body,
                                      row.prev_hash)
        # The body is decoded only when it is needed: a body whose text hashes to the stored
        # hash is the canonical JSON object that was appended (anything else fails the
        # signature), so only a checkpoint's body, or one that does not hash, is read.
        body: dict[str, Any] = {}
        if computed != row.hash or row.kind == Kind.CHECKPOINT:
            try:
                body = parse_body(row.body)
            except ValueError as err:
                raise _Failed(Problem.EDITED, seq,
                              f"record {seq}'s body is no longer a JSON object ({err})"
                              ) from None
        if computed != row.hash:  # edited, or a body stored in another (equal) encoding
            computed = record_hash(seq, row.ts, row.kind, row.subject, row.actor, body,
                                   row.prev_hash)
        if computed != row.hash:
            if row.prev_hash != prev_hash:
                raise _Failed(Problem.REORDERED, seq,
                              f"the record at seq {seq} does not belong there: it does not "
                              "hash to its stored hash at this position and its prev_hash "
                              f"does not link to seq {prev_seq}")
            raise _Failed(Problem.EDITED, seq,
                          f"record {seq} ({row.kind}) was changed: its content hashes to "
                          f"{computed[:16]}..., its stored hash is {row.hash[:16]}...")
        if row.prev_hash != prev_hash:
            raise _Failed(Problem.REORDERED, seq,
                          f"record {seq}'s prev_hash does not link to seq {prev_seq}: "
                          "records were moved or replaced")
        self.signature(seq, row.hash, row.sig)
        if row.kind == Kind.CHECKPOINT:
            _check_checkpoint(seq, body, prev_hash)
            self.checkpoints += 1
            self.last_checkpoint = (seq, row.hash)
        if seq in self.marks:
            self.seen[seq] = row.hash
        self.seq, self.hash, self.count = seq, row.hash, self.count + 1

    def _signature_here(self, seq: int, digest: str, sig: str) -> None:
        if not self.verifier.record_ok(digest, sig):
            raise _Failed(Problem.BAD_SIGNATURE, seq,
                          f"record {seq}'s signature does not verify with ledger key "
                          f"{self.verifier.key_id}: it was re-signed with another key or edited")

    def anchor_checks(self) -> None:
        anchor, path = self.anchor, self.path
        if self.mark_failure is not None:
            raise self.mark_failure
        if self.signed_head is not None:
            self._reaches(self.signed_head, f"the signed head {self.head_path}")
        if anchor is None:
            if path is not None and self.last_checkpoint is not None:
                raise _Failed(Problem.ANCHOR_MISSING, None,
                              f"no anchor file at {path}, but the ledger has {self.checkpoints} "
                              f"checkpoints (the last at seq {self.last_checkpoint[0]}): the "
                              "anchor was deleted, or --anchor / --state-dir point elsewhere")
            return
        self._reaches(anchor, f"the anchor {path}")
        if self.last_checkpoint and self.last_checkpoint[0] > anchor.seq:
            _check_rollback(path, self.verifier, self.last_checkpoint, anchor)

    def _reaches(self, mark: Anchor, what: str) -> None:
        """The database still holds the record ``mark`` names, with its hash."""
        head = self.seq
        if mark.seq > head:
            missing = (f"record {head + 1} is" if mark.seq == head + 1 else
                       f"records {head + 1} to {mark.seq} are")
            raise _Failed(Problem.TRUNCATED, head + 1,
                          f"{what} says the ledger reached seq {mark.seq}, but the database "
                          f"ends at seq {head}: {missing} missing (deleted from the tail)")
        stored = self.seen.get(mark.seq)
        if stored != mark.hash:
            raise _Failed(Problem.ANCHOR_MISMATCH, mark.seq,
                          f"record {mark.seq} has hash {str(stored)[:16]}..., {what} names "
                          f"{mark.hash[:16]}...: the ledger was rewritten from there on")


def _check_rollback(path: Path | None, verifier: Verifier, last_checkpoint: tuple[int, str],
                    anchor: Anchor) -> None:
    """The database has a newer checkpoint than the anchor read at the start. A writer may
    have committed it and not yet moved the anchor: read the anchor once more."""
    if path is not None:
        try:
            fresh = read_anchor(path)
        except AnchorError:
            fresh = None
        if (fresh is not None and fresh.signature_ok(verifier)
                and fresh.seq >= last_checkpoint[0]):
            return
    raise _Failed(Problem.ANCHOR_ROLLBACK, None,
                  f"the anchor {path} names seq {anchor.seq}, older than the newest checkpoint "
                  f"in the database (seq {last_checkpoint[0]}): the anchor was replaced with an "
                  "older copy, or the controller stopped between committing that checkpoint and "
                  "writing the anchor; if you know it was the latter, run "
                  "`aegis-controller ledger checkpoint`")
