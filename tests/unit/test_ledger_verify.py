"""A real ledger in an SQLite file, tampered with through raw SQL (sqlite3, not the
ledger's code) and by swapping anchor files: verify must name the problem and the first
bad seq."""

import itertools
import json
import re
import shutil
import sqlite3
from pathlib import Path

import pytest

from aegis_controller import db
from aegis_controller.ledger import (
    Kind,
    Ledger,
    LedgerInputError,
    Problem,
    init_keys,
    load_signer,
    load_verifier,
)
from aegis_controller.ledger.records import record_hash

pytestmark = pytest.mark.unit

ENTRIES = 25
EVERY = 10  # checkpoints after seq 10 (at 11) and seq 20 (at 21); head is seq 27


class Fixture:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.private, self.public, _ = init_keys(tmp / "keys")
        self.db_file = tmp / "controller.db"
        self.url = f"sqlite:///{self.db_file}"
        self.anchor = tmp / "ledger.anchor.json"
        self.engine = db.open_engine(self.url)
        db.upgrade(self.engine)
        self.ledger = Ledger(self.engine, signer=load_signer(self.private),
                             anchor_path=self.anchor, checkpoint_every=EVERY)

    def fill(self, n: int = ENTRIES) -> None:
        for i in range(n):
            self.ledger.append("state_change", f"node{i % 3}", {"i": i, "to": "trusted"})

    def sql(self, *statements: str, params: tuple = ()) -> None:
        con = sqlite3.connect(self.db_file)
        try:
            for statement in statements:
                con.execute(statement, params if "?" in statement else ())
            con.commit()
        finally:
            con.close()

    def row(self, seq: int) -> dict:
        con = sqlite3.connect(self.db_file)
        con.row_factory = sqlite3.Row
        try:
            row = con.execute("SELECT * FROM ledger_records WHERE seq = ?", (seq,)).fetchone()
            return dict(row)
        finally:
            con.close()

    def verify(self, *, anchor: bool = True):
        # What an outside verifier has: the database, the public key, the anchor file.
        reader = Ledger(db.open_engine(self.url, must_exist=True),
                        anchor_path=self.anchor if anchor else None)
        return reader.verify(load_verifier(self.public))


@pytest.fixture
def lg(tmp_path: Path) -> Fixture:
    return Fixture(tmp_path)


def _failed(result, problem: Problem, seq: int | None):
    assert not result.ok
    assert (result.problem, result.first_bad_seq) == (problem, seq), result.detail
    assert result.detail


def test_round_trip_with_periodic_checkpoints_and_anchor(lg):
    lg.fill()
    result = lg.verify()
    assert result.ok, result.detail
    assert (result.count, result.checkpoints) == (ENTRIES + 2, 2)
    assert result.head["seq"] == 27
    assert result.anchor["seq"] == 21
    records = list(lg.ledger.records())
    assert [r.seq for r in records] == list(range(1, 28))
    assert [r.seq for r in records if r.kind == Kind.CHECKPOINT] == [11, 21]
    cp = records[20]
    assert cp.body == {"head_seq": 20, "head_hash": records[19].hash, "count": 20,
                       "key_id": lg.ledger.signer.key_id}
    assert records[0].prev_hash == "0" * 64
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(records))
    assert [r.seq for r in lg.ledger.last(3)] == [25, 26, 27]


def test_an_empty_ledger_verifies(lg):
    result = lg.verify()
    assert result.ok and result.count == 0 and result.head is None and result.anchor is None


def test_edited_body_is_found(lg):
    lg.fill()
    lg.sql("""UPDATE ledger_records SET body = '{"i":4,"to":"quarantined"}' WHERE seq = 5""")
    _failed(lg.verify(), Problem.EDITED, 5)


def test_body_that_is_no_longer_json_is_an_edit(lg):
    lg.fill()
    lg.sql("UPDATE ledger_records SET body = 'garbage' WHERE seq = 9")
    _failed(lg.verify(), Problem.EDITED, 9)


def test_edit_rehashed_and_resigned_with_another_key_is_found(lg):
    lg.fill()
    row = lg.row(5)
    body = {"i": 4, "to": "quarantined"}
    new_hash = record_hash(5, row["ts"], row["kind"], row["subject"], row["actor"], body,
                           row["prev_hash"])
    forger = load_signer(init_keys(lg.tmp / "forger")[0])
    lg.sql("UPDATE ledger_records SET body = ?, hash = ?, sig = ? WHERE seq = 5",
           params=(json.dumps(body, separators=(",", ":"), sort_keys=True), new_hash,
                   forger.sign_record(new_hash)))
    _failed(lg.verify(), Problem.BAD_SIGNATURE, 5)


def test_deleted_middle_record_is_found(lg):
    lg.fill()
    lg.sql("DELETE FROM ledger_records WHERE seq = 8")
    _failed(lg.verify(), Problem.DELETED, 8)
    lg.sql("DELETE FROM ledger_records WHERE seq IN (13, 14)")
    _failed(lg.verify(), Problem.DELETED, 8)


def test_deleted_first_record_is_found(lg):
    lg.fill()
    lg.sql("DELETE FROM ledger_records WHERE seq = 1")
    _failed(lg.verify(), Problem.DELETED, 1)


def test_swapped_records_are_found_as_reordered(lg):
    lg.fill()
    lg.sql("UPDATE ledger_records SET seq = -1 WHERE seq = 5",
           "UPDATE ledger_records SET seq = 5 WHERE seq = 6",
           "UPDATE ledger_records SET seq = 6 WHERE seq = -1")
    _failed(lg.verify(), Problem.REORDERED, 5)


def test_truncated_tail_is_found_through_the_anchor(lg):
    lg.fill()
    lg.sql("DELETE FROM ledger_records WHERE seq > 15")  # the last 12 rows
    result = lg.verify()
    _failed(result, Problem.TRUNCATED, 16)
    assert "reached seq 21" in result.detail
    # Without the anchor, what is left is a valid shorter chain: the anchor is what counts.
    assert lg.verify(anchor=False).ok


def test_truncating_everything_is_found(lg):
    lg.fill()
    lg.sql("DELETE FROM ledger_records")
    _failed(lg.verify(), Problem.TRUNCATED, 1)


def test_on_demand_checkpoint_anchors_the_head_and_is_idempotent(lg):
    lg.fill()
    record, anchor = lg.ledger.checkpoint()
    assert (record.seq, record.kind, anchor.seq, anchor.hash) == (28, "checkpoint", 28,
                                                                  record.hash)
    again, anchor2 = lg.ledger.checkpoint()
    assert again == record and anchor2 == anchor
    lg.sql("DELETE FROM ledger_records WHERE seq = 28")  # only the last row
    _failed(lg.verify(), Problem.TRUNCATED, 28)


def test_older_anchor_put_back_is_found_as_rollback(lg):
    lg.fill(12)  # checkpoint at 11
    saved = lg.tmp / "anchor-at-11.json"
    shutil.copy(lg.anchor, saved)
    lg.fill(20)  # checkpoints at 21 and 31
    assert lg.verify().ok
    shutil.copy(saved, lg.anchor)
    result = lg.verify()
    _failed(result, Problem.ANCHOR_ROLLBACK, None)
    assert "older than the newest checkpoint" in result.detail


def test_edited_anchor_is_found(lg):
    lg.fill()
    doc = json.loads(lg.anchor.read_text())
    doc["seq"] = 11
    lg.anchor.write_text(json.dumps(doc))
    _failed(lg.verify(), Problem.ANCHOR_BAD_SIGNATURE, None)


def test_corrupt_or_missing_anchor_is_found(lg):
    lg.fill()
    lg.anchor.write_text("\x00\x01 not json")
    result = lg.verify()
    _failed(result, Problem.ANCHOR_INVALID, None)
    assert str(lg.anchor) in result.detail
    lg.anchor.unlink()
    _failed(lg.verify(), Problem.ANCHOR_MISSING, None)


def test_rewritten_chain_is_found_through_the_anchor(lg):
    """Someone with the private key rebuilds the ledger from seq 12 on: every record
    verifies, but the anchor still names the old checkpoint 21."""
    lg.fill()
    lg.sql("DELETE FROM ledger_records WHERE seq > 11")
    saved = lg.anchor.read_text()
    lg.anchor.unlink()
    lg.fill(14)
    lg.anchor.write_text(saved)
    _failed(lg.verify(), Problem.ANCHOR_MISMATCH, 21)


def test_failed_batch_writes_nothing(lg):
    lg.fill(3)
    with pytest.raises(LedgerInputError, match="unknown record kind"):
        lg.ledger.append_many([("order", "n1", {}, None), ("bogus", "n1", {}, None)])
    assert lg.ledger.head().seq == 3
    written = lg.ledger.append_many([("order", "n1", {"k": i}, "controller") for i in range(9)])
    assert [r.seq for r in written] == [4, 5, 6, 7, 8, 9, 10, 12, 13]  # 11: checkpoint
    assert lg.verify().ok


def test_corrupt_database_file_is_named(tmp_path):
    bad = tmp_path / "controller.db"
    bad.write_bytes(b"this is not an sqlite database at all" * 200)
    expected = rf"{re.escape(str(bad))}: file is not a database .*restore it"
    with pytest.raises(db.DatabaseError, match=expected):
        db.open_engine(f"sqlite:///{bad}")


def test_missing_database_is_named_for_readers(tmp_path):
    with pytest.raises(db.DatabaseError, match="no database file at"):
        db.open_engine(f"sqlite:///{tmp_path / 'nope.db'}", must_exist=True)
    assert not (tmp_path / "nope.db").exists()


def test_database_without_the_ledger_table_says_so(tmp_path):
    path = tmp_path / "empty.db"
    sqlite3.connect(path).close()
    ledger = Ledger(db.open_engine(f"sqlite:///{path}", must_exist=True))
    with pytest.raises(db.DatabaseError, match="no such table"):
        ledger.head()


def test_schema_upgrade_is_idempotent(lg):
    db.upgrade(lg.engine)
    db.upgrade(lg.engine)
    lg.fill(2)
    assert lg.verify().ok
