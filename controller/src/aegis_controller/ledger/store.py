"""The ledger's table and its one writer path: append, checkpoint, read back.

Appends are serialised: each runs in one write transaction that reads the head and
inserts the next seq (primary key). On SQLite the transaction holds the write lock from
its start (``BEGIN IMMEDIATE``), so writers in several processes queue; on PostgreSQL a
concurrent writer that took the same seq fails on the key and the append is retried on
the new head. The transaction commits before :meth:`Ledger.append` returns.

:meth:`Ledger.append` group-commits: appends that arrive from several threads while a
commit is under way wait and are then written together in the next transaction (one
commit, one fsync), each record still signed on its own and chained to the one before
it. Each caller returns only once the transaction holding its record has committed; if
that transaction fails, every caller in it gets the error and none of its records is
written (the ledger stays as it was before the group).

Every ``checkpoint_every`` seqs (a record whose seq is a multiple of it) the same
transaction adds a ``checkpoint`` record naming the head it follows; after the commit the
anchor file (:mod:`.anchor`) is moved to that checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    Index,
    Row,
    String,
    Table,
    Text,
    exc,
    select,
)

from .. import db
from . import anchor as anchors
from .errors import AnchorError, KeyFileError
from .head import head_path
from .keys import Signer, Verifier
from .records import (
    GENESIS,
    Entry,
    Kind,
    Record,
    canonical,
    check_entry,
    now_ts,
    parse_body,
    stored_record_hash,
)

if TYPE_CHECKING:
    from .verify import VerifyResult

log = logging.getLogger(__name__)

DEFAULT_CHECKPOINT_EVERY = 1000
#: Attempts of one append when other writers keep taking the next seq (PostgreSQL).
MAX_ATTEMPTS = 50

records_table = Table(
    "ledger_records", db.metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("ts", String(32), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("subject", String(255), nullable=False),
    Column("actor", String(255), nullable=False),
    Column("body", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Column("sig", String(128), nullable=False),
    Index("ix_ledger_records_kind_seq", "kind", "seq"),
    Index("ix_ledger_records_subject_seq", "subject", "seq"),
)
_t = records_table.c


def row_to_record(row: Row[Any] | Mapping[str, Any]) -> Record:
    """A stored row as a Record; a body that no longer parses is kept as ``{"_raw": text}``
    (for display only: :func:`.verify.verify` reports such a record as edited)."""
    data = dict(row._mapping) if isinstance(row, Row) else dict(row)
    try:
        data["body"] = parse_body(data["body"])
    except ValueError:
        data["body"] = {"_raw": data["body"]}
    return Record(**data)


class Ledger:
    """The audit ledger in one database.

    ``signer`` (the private key) is needed to append and checkpoint; reading and verifying
    need only a :class:`~.keys.Verifier`. ``anchor_path`` None disables the anchor.
    """

    def __init__(self, engine: Engine, *, signer: Signer | None = None,
                 anchor_path: Path | None = None,
                 checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
                 actor: str = "controller") -> None:
        if not isinstance(checkpoint_every, int) or checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be a whole number >= 1, "
                             f"got {checkpoint_every!r}")
        self.engine = engine
        self.signer = signer
        self.anchor_path = anchor_path
        self.checkpoint_every = checkpoint_every
        self.actor = actor
        self._group = _GroupCommit(self._append_checked)

    # -- writing ------------------------------------------------------------------------
    def append(self, kind: str, subject: str = "", body: Mapping[str, Any] | None = None, *,
               actor: str | None = None) -> Record:
        """Append one record and return it, committed — together with the records other
        threads append meanwhile (group commit, see the module's docstring)."""
        entry = check_entry(kind, subject, {} if body is None else body, actor or self.actor)
        self._signer()
        return self._group.append(entry)

    def append_many(self, entries: Iterable[tuple[str, str, Any, str | None]]) -> list[Record]:
        """Append ``(kind, subject, body, actor)`` entries in one transaction (all or none);
        returns the appended records, without the checkpoints written among them."""
        checked = [check_entry(kind, subject, body, actor or self.actor)
                   for kind, subject, body, actor in entries]
        return self._append_checked(checked) if checked else []

    def _append_checked(self, checked: Sequence[Entry]) -> list[Record]:
        written = self._write(lambda conn: self._insert(conn, checked))
        self._anchor_last_checkpoint(written, raise_errors=False)
        return [r for r in written if r.kind != Kind.CHECKPOINT]

    @contextlib.contextmanager
    def recording(self) -> Iterator[Recorder]:
        """One write transaction for a state change and its ledger records: both commit or
        neither (an exception in the block rolls back the change and its records)."""
        self._signer()
        recorder = Recorder(self)
        with db.transaction(self.engine) as conn:
            recorder.conn = conn
            yield recorder
        self._anchor_last_checkpoint(recorder.written, raise_errors=False)
        for call in recorder.after_commit:  # committed: others may act on it now
            try:
                call()
            except Exception:
                log.exception("after-commit callback failed")

    def checkpoint(self) -> tuple[Record, anchors.Anchor | None]:
        """Write a checkpoint now (unless the head already is one) and move the anchor to it."""
        written = self._write(self._insert_checkpoint)
        return written[0], self._anchor_last_checkpoint(written, raise_errors=True)

    def seal(self) -> anchors.Anchor | None:
        """Anchor the head outside the database: checkpoint it when it moved since the last
        seal (else reuse the checkpoint at the head) and sign it into the head file
        (:mod:`.head`). Returns that signed head; None for an empty ledger or without an
        anchor path."""
        if self.anchor_path is None or self.head() is None:
            return None
        record, _ = self.checkpoint()
        return anchors.advance(head_path(self.anchor_path), record.seq, record.hash,
                               record.seq, self._signer(), anchors.HEAD_FORMAT)

    def _signer(self) -> Signer:
        if self.signer is None:
            raise KeyFileError("this ledger was opened without its private key: writing needs "
                               "it (see `aegis-controller keys init`)")
        return self.signer

    def _write(self, body: Any) -> list[Record]:
        self._signer()
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                with db.errors(self.engine), db.writer(self.engine) as conn:
                    return body(conn)
            except exc.IntegrityError:
                if attempt == MAX_ATTEMPTS:
                    break
                # Another writer took the seq: back off a little, then build on its head.
                time.sleep(random.uniform(0, min(0.002 * 2 ** attempt, 0.25)))  # noqa: S311
        raise db.DatabaseError(f"could not append to the ledger after {MAX_ATTEMPTS} attempts: "
                               "other writers kept taking the next seq")

    @staticmethod
    def _head(conn: Connection) -> tuple[int, str, str | None]:
        row = conn.execute(select(_t.seq, _t.hash, _t.kind).order_by(_t.seq.desc())
                           .limit(1)).first()
        return (row.seq, row.hash, row.kind) if row else (0, GENESIS, None)

    def _make(self, seq: int, prev_hash: str, kind: str, subject: str, actor: str,
              body: dict[str, Any], body_json: str) -> tuple[Record, str]:
        ts = now_ts()
        # body_json is canonical (check_entry, _checkpoint_record): hash it as it is stored
        digest = stored_record_hash(seq, ts, kind, subject, actor, body_json, prev_hash)
        record = Record(seq=seq, ts=ts, kind=kind, subject=subject, actor=actor, body=body,
                        prev_hash=prev_hash, hash=digest, sig=self._signer().sign_record(digest))
        return record, body_json

    def _checkpoint_record(self, seq: int, head_seq: int, head_hash: str) -> tuple[Record, str]:
        body = {"head_seq": head_seq, "head_hash": head_hash, "count": head_seq,
                "key_id": self._signer().key_id}
        encoded = canonical(body).decode("utf-8")
        return self._make(seq, head_hash, Kind.CHECKPOINT.value, "", self.actor,
                          parse_body(encoded), encoded)

    def _insert(self, conn: Connection, entries: Sequence[Entry]) -> list[Record]:
        db.serialise_ledger(conn)
        seq, prev_hash, _ = self._head(conn)
        made: list[tuple[Record, str]] = []
        for entry in entries:
            seq += 1
            made.append(self._make(seq, prev_hash, entry.kind, entry.subject, entry.actor,
                                   entry.body, entry.body_json))
            prev_hash = made[-1][0].hash
            if seq % self.checkpoint_every == 0:
                seq += 1
                made.append(self._checkpoint_record(seq, seq - 1, prev_hash))
                prev_hash = made[-1][0].hash
        self._store(conn, made)
        return [record for record, _ in made]

    def _insert_checkpoint(self, conn: Connection) -> list[Record]:
        seq, head_hash, kind = self._head(conn)
        if kind == Kind.CHECKPOINT:
            row = conn.execute(select(records_table).where(_t.seq == seq)).one()
            return [row_to_record(row)]
        made = [self._checkpoint_record(seq + 1, seq, head_hash)]
        self._store(conn, made)
        return [made[0][0]]

    @staticmethod
    def _store(conn: Connection, made: Sequence[tuple[Record, str]]) -> None:
        conn.execute(records_table.insert(), [
            {"seq": r.seq, "ts": r.ts, "kind": r.kind, "subject": r.subject, "actor": r.actor,
             "body": body_json, "prev_hash": r.prev_hash, "hash": r.hash, "sig": r.sig}
            for r, body_json in made])
        for r, _ in made:
            log.log(logging.INFO if r.kind == Kind.CHECKPOINT else logging.DEBUG,
                    "ledger %s", r.kind, extra={"seq": r.seq, "kind": r.kind,
                                                "subject": r.subject, "hash": r.hash})

    def _anchor_last_checkpoint(self, written: Sequence[Record], *,
                                raise_errors: bool) -> anchors.Anchor | None:
        checkpoints = [r for r in written if r.kind == Kind.CHECKPOINT]
        if not checkpoints or self.anchor_path is None:
            return None
        last = checkpoints[-1]
        try:
            return anchors.advance(self.anchor_path, last.seq, last.hash, last.seq,
                                   self._signer())
        except AnchorError as err:
            if raise_errors:
                raise
            # The records are committed: failing the append now would invite a duplicate.
            log.error("ledger anchor not advanced", extra={"seq": last.seq, "error": str(err)})
            return None

    # -- reading ------------------------------------------------------------------------
    def head(self) -> Record | None:
        with db.errors(self.engine), db.reader(self.engine) as conn:
            row = conn.execute(select(records_table).order_by(_t.seq.desc()).limit(1)).first()
        return row_to_record(row) if row else None

    def last(self, n: int) -> list[Record]:
        """The last ``n`` records, oldest first."""
        with db.errors(self.engine), db.reader(self.engine) as conn:
            rows = conn.execute(select(records_table).order_by(_t.seq.desc()).limit(n)).all()
        return [row_to_record(row) for row in reversed(rows)]

    def rows(self, *, batch: int = 2000) -> Iterator[Row[Any]]:
        """Every stored row in seq order, streamed ``batch`` rows at a time from one
        consistent read transaction (never the whole table in memory)."""
        with db.errors(self.engine), db.reader(self.engine) as conn:
            result = conn.execution_options(yield_per=batch).execute(
                select(records_table).order_by(_t.seq))
            yield from result

    def records(self, *, batch: int = 2000) -> Iterator[Record]:
        for row in self.rows(batch=batch):
            yield row_to_record(row)

    def verify(self, verifier: Verifier | None = None) -> VerifyResult:
        """Verify the whole ledger (see :func:`.verify.verify`)."""
        from .verify import verify

        if verifier is None:
            verifier = self._signer().verifier
        return verify(self, verifier)


#: Most records one group commit writes (the rest wait for the next).
MAX_GROUP = 1000


class _Waiter:
    __slots__ = ("done", "entry", "error", "lead", "record")

    def __init__(self, entry: Entry) -> None:
        self.entry = entry
        self.done = threading.Event()
        self.lead = False
        self.record: Record | None = None
        self.error: BaseException | None = None


class _GroupCommit:
    """Leader/follower group commit. The first caller to find no commit under way leads:
    it takes every queued entry (its own first among them, up to :data:`MAX_GROUP`),
    writes them in one transaction, hands each caller its record (or the error), and
    passes the lead to the oldest caller still queued. Callers that arrive meanwhile only
    queue and wait, so under load each commit carries many records."""

    def __init__(self, write: Callable[[Sequence[Entry]], list[Record]]) -> None:
        self._write = write
        self._lock = threading.Lock()
        self._queue: list[_Waiter] = []
        self._active = False

    def append(self, entry: Entry) -> Record:
        me = _Waiter(entry)
        with self._lock:
            self._queue.append(me)
            if not self._active:
                self._active = me.lead = True
        if not me.lead:
            me.done.wait()
        if me.lead:
            self._lead()
        if me.error is not None:
            raise me.error
        assert me.record is not None
        return me.record

    def _lead(self) -> None:
        with self._lock:
            group = self._queue[:MAX_GROUP]
            del self._queue[:len(group)]
        try:
            records = self._write([w.entry for w in group])
        except BaseException as err:  # every caller of the group learns it was not written
            for w in group:
                w.error = err
        else:
            for w, record in zip(group, records, strict=True):
                w.record = record
        with self._lock:
            if self._queue:
                successor = self._queue[0]
                successor.lead = True
                successor.done.set()
            else:
                self._active = False
        for w in group:
            w.lead = False
            w.done.set()


class Recorder:
    """The open write transaction of :meth:`Ledger.recording`: ``conn`` writes the state,
    :meth:`append` the records, on the same connection."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.conn: Connection = None  # type: ignore[assignment]  # set when the block opens
        self.written: list[Record] = []
        #: called once the transaction has committed (never on a rollback)
        self.after_commit: list[Callable[[], None]] = []

    def append(self, kind: str, subject: str = "", body: Mapping[str, Any] | None = None, *,
               actor: str | None = None) -> Record:
        """Append one record inside this transaction (committed with the state, or not at
        all)."""
        entry = check_entry(kind, subject, {} if body is None else body,
                            actor or self.ledger.actor)
        made = self.ledger._insert(self.conn, [entry])
        self.written.extend(made)
        return next(r for r in made if r.kind != Kind.CHECKPOINT)
