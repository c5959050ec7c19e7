"""A consistent copy of the controller's database and the ledger marks (anchor, signed
head) that go with it, taken while the controller may be writing and sealing.

The marks live outside the database and move after a commit: a writer commits a
checkpoint, then moves the anchor to it; a seal then signs the head. So the marks that go
with a copy are chosen, not just read: the copy's head seq ``H`` and newest checkpoint
``C`` are read from the copy itself (SQLite: the copy file; PostgreSQL: the snapshot
``pg_dump`` is given, exported from one transaction), and a pair of marks fits when the
anchor names a seq in ``[C, H]`` (none at all when the copy has no checkpoint) and the head
one at most ``H``. The marks read before the copy and those read (a few times) after it
are tried; when none fits, the copy is made again. An SQLite copy is then verified with
the project's ledger verification; on PostgreSQL the live ledger is verified first.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from pathlib import Path

from sqlalchemy import text

from .. import db
from ..ledger import Ledger, VerifyResult, head_path, load_verifier, open_ledger
from ..settings import Settings
from . import pg_tools
from .format import BackupError, LedgerRefused

#: Copies of the database made at most before giving up on marks that fit.
ATTEMPTS = 20
#: Reads of the marks after a copy (``SETTLE`` seconds apart) while a writer moves them.
READS, SETTLE = 10, 0.05

Marks = tuple[bytes | None, bytes | None]
_SPAN = ("SELECT (SELECT max(seq) FROM ledger_records), "
         "(SELECT max(seq) FROM ledger_records WHERE kind = 'checkpoint')")


def _read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def read_marks(settings: Settings) -> Marks:
    return _read_or_none(settings.anchor_path), _read_or_none(head_path(settings.anchor_path))


def _seq(data: bytes | None) -> int | None:
    try:
        seq = json.loads(data)["seq"] if data is not None else None
    except (ValueError, TypeError, KeyError):
        return -1  # unreadable: never fits (verification names the problem)
    return seq if isinstance(seq, int) else None if seq is None else -1


def fits(marks: Marks, head: int, checkpoint: int) -> bool:
    """Whether ``marks`` go with a copy whose head is ``head`` and newest checkpoint
    ``checkpoint`` (0: none)."""
    anchor, signed = _seq(marks[0]), _seq(marks[1])
    anchor_ok = (anchor is None and checkpoint == 0) or \
        (anchor is not None and checkpoint <= anchor <= head and anchor > 0)
    return anchor_ok and (signed is None or 0 < signed <= head)


def _copy_sqlite(source: Path, out: Path) -> tuple[int, int]:
    if not source.is_file():
        raise BackupError(f"no database file at {source}: check --state-dir / --db")
    out.unlink(missing_ok=True)
    src = sqlite3.connect(f"file:{source}?mode=rw", uri=True, timeout=db.LOCK_TIMEOUT)
    dst = sqlite3.connect(out)
    try:
        src.backup(dst)
        head, checkpoint = dst.execute(_SPAN).fetchone()
    except sqlite3.Error as err:
        raise BackupError(f"database file {source}: SQLite online backup failed ({err})") \
            from None
    finally:
        dst.close()
        src.close()
    return head or 0, checkpoint or 0


def _dump_postgresql(url: str, out: Path) -> tuple[int, int]:
    engine = db.open_engine(url)
    try:
        with db.errors(engine), engine.connect() as conn:
            conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                exported = conn.execute(text("SELECT pg_export_snapshot()")).scalar_one()
                head, checkpoint = conn.execute(text(_SPAN)).one()
                try:
                    pg_tools.dump(url, out, snapshot=str(exported))
                except pg_tools.PgToolError as err:
                    raise BackupError(str(err)) from None
    finally:
        engine.dispose()
    return head or 0, checkpoint or 0


def _refused(result: VerifyResult) -> LedgerRefused:
    return LedgerRefused(f"the ledger does not verify ({result.problem} at seq "
                         f"{result.first_bad_seq}: {result.detail}): no backup written; run "
                         "`aegis-controller ledger verify` and fix it first")


def _verify_copy(copy: Path, marks: Marks, work: Path, settings: Settings) -> None:
    """The project's ledger verification on the SQLite copy, with the marks chosen for it."""
    anchor = work / "marks" / "ledger.anchor.json"
    anchor.parent.mkdir(mode=0o700)
    try:
        for path, data in ((anchor, marks[0]), (head_path(anchor), marks[1])):
            if data is not None:
                path.write_bytes(data)
        engine = db.open_engine(f"sqlite:///{copy}", must_exist=True)
        try:
            result = Ledger(engine, anchor_path=anchor).verify(
                load_verifier(settings.public_key))
        finally:
            engine.dispose()
    finally:
        shutil.rmtree(anchor.parent, ignore_errors=True)
    if not result.ok:
        raise _refused(result)
    for leftover in (copy.with_name(copy.name + "-wal"), copy.with_name(copy.name + "-shm")):
        leftover.unlink(missing_ok=True)


def _verify_live(settings: Settings) -> None:
    live = open_ledger(settings, write=False)
    try:
        result = live.verify(load_verifier(settings.public_key))
    finally:
        live.engine.dispose()
    if not result.ok:
        raise _refused(result)


def snapshot(settings: Settings, work: Path, kind: str) -> tuple[Path, Marks]:
    """The copy of the database in ``work`` and the marks that go with it."""
    if kind == "postgresql":
        _verify_live(settings)
    copy = work / ("controller.db" if kind == "sqlite" else "controller.pgdump")
    for _attempt in range(ATTEMPTS):
        before = read_marks(settings)
        if kind == "sqlite":
            head, checkpoint = _copy_sqlite(db.sqlite_path(settings.db_url) or Path(), copy)
        else:
            head, checkpoint = _dump_postgresql(settings.db_url, copy)
        candidates = [before]
        for _read in range(READS):
            candidates.insert(0, read_marks(settings))
            chosen = next((m for m in candidates if fits(m, head, checkpoint)), None)
            if chosen is not None:
                if kind == "sqlite":
                    _verify_copy(copy, chosen, work, settings)
                return copy, chosen
            time.sleep(SETTLE)
        if checkpoint and all(anchor is None for anchor, _ in candidates):
            raise BackupError(f"no ledger anchor at {settings.anchor_path}, but the database "
                              "has checkpoints: pass --anchor (or AEGIS_LEDGER_ANCHOR) where "
                              "the controller keeps it, or run `aegis-controller ledger "
                              "verify`")
    raise BackupError(f"no ledger anchor read during {ATTEMPTS} copies of the database "
                      "matched the copy (the ledger is being checkpointed very often, or its "
                      "anchor file is damaged): run `aegis-controller ledger verify`, then "
                      "try again")
