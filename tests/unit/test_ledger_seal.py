"""Sealing the ledger's head outside the database (issue 12 item 9): on a timer when the
head moved and at shutdown, so that deleting the newest records is found by verify, which
also reports how many records no signed head covers yet."""

import json
import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from aegis_controller import db
from aegis_controller.cli import main
from aegis_controller.ledger import (
    Ledger,
    Problem,
    head_path,
    init_keys,
    load_signer,
    load_verifier,
    read_head,
    sealing,
)

pytestmark = pytest.mark.unit


class Lab:
    """A ledger with the default checkpoint interval (1,000), in an SQLite file."""

    def __init__(self, tmp: Path, *, existing: bool = False) -> None:
        self.state = tmp if existing else tmp / "state"
        if existing:
            keys = self.state / "keys"
            self.private, self.public = keys / "ledger.key", keys / "ledger.pub"
        else:
            self.private, self.public, _ = init_keys(self.state / "keys")
        self.db_file = self.state / "controller.db"
        self.url = f"sqlite:///{self.db_file}"
        self.anchor = self.state / "ledger.anchor.json"
        engine = db.open_engine(self.url)
        db.upgrade(engine)
        self.ledger = Ledger(engine, signer=load_signer(self.private), anchor_path=self.anchor)

    @classmethod
    def reopen(cls, state: Path) -> "Lab":
        """The lab whose state directory (keys, database, anchor, head) is ``state``."""
        return cls(state, existing=True)

    def fill(self, n: int) -> None:
        self.ledger.append_many([("state_change", f"node{i % 3}", {"i": i}, None)
                                 for i in range(n)])

    def delete_from(self, seq: int) -> None:
        con = sqlite3.connect(self.db_file)
        try:
            con.execute("DELETE FROM ledger_records WHERE seq >= ?", (seq,))
            con.commit()
        finally:
            con.close()

    def verify(self):
        reader = Ledger(db.open_engine(self.url, must_exist=True), anchor_path=self.anchor)
        return reader.verify(load_verifier(self.public))


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    return Lab(tmp_path)


def _wait_for_head(path: Path, seq: int) -> None:
    deadline = time.monotonic() + 30  # generous: the timer ticks every 50 ms
    while time.monotonic() < deadline:
        head = read_head(path)
        if head is not None and head.seq >= seq:
            return
        time.sleep(0.02)
    pytest.fail(f"the sealing timer did not write a signed head at seq {seq} in 30 s")


def test_deleting_the_two_newest_records_after_a_timer_seal_is_found(lab):
    lab.fill(25)
    with sealing(lab.ledger, interval=0.05):
        # The timer (not shutdown) seals: a checkpoint at 26 and the signed head on it.
        _wait_for_head(head_path(lab.anchor), 26)
    assert lab.verify().ok
    lab.delete_from(25)  # record 25 and the timer's checkpoint 26
    result = lab.verify()
    assert not result.ok
    assert (result.problem, result.first_bad_seq) == (Problem.TRUNCATED, 25), result.detail
    assert "records 25 to 26 are missing" in result.detail


def test_deleting_47_of_50_before_the_first_checkpoint_is_found_after_shutdown(lab):
    with sealing(lab.ledger, interval=3600):  # only the shutdown seal runs
        lab.fill(50)
    assert read_head(head_path(lab.anchor)).seq == 51
    lab.delete_from(4)
    result = lab.verify()
    assert (result.problem, result.first_bad_seq) == (Problem.TRUNCATED, 4), result.detail
    assert "records 4 to 51 are missing" in result.detail


def test_seal_only_checkpoints_when_the_head_moved(lab):
    lab.fill(3)
    first = lab.ledger.seal()
    assert (first.seq, lab.ledger.seal()) == (4, first)  # nothing new: no new checkpoint
    assert lab.ledger.head().seq == 4
    lab.fill(2)
    assert lab.ledger.seal().seq == 7


def test_verify_reports_the_unanchored_tail(lab):
    lab.fill(5)
    assert lab.verify().unanchored == 5  # nothing sealed yet
    lab.ledger.seal()
    lab.fill(3)
    result = lab.verify()
    assert result.ok and result.unanchored == 3
    assert result.signed_head["seq"] == 6


def test_verify_command_prints_the_unanchored_tail(lab, capsys, monkeypatch):
    for name in ("AEGIS_CONTROLLER_DB", "AEGIS_LEDGER_ANCHOR"):
        monkeypatch.delenv(name, raising=False)
    lab.fill(4)
    lab.ledger.seal()
    lab.fill(2)
    assert main(["--state-dir", str(lab.state), "ledger", "verify"]) == 0
    assert "unanchored tail: 2 records" in capsys.readouterr().out
    assert main(["--state-dir", str(lab.state), "ledger", "verify", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["unanchored"] == 2


def test_a_tampered_or_swapped_signed_head_is_found(lab):
    lab.fill(4)
    lab.ledger.seal()
    path = head_path(lab.anchor)
    good = path.read_text()
    doc = json.loads(good)
    doc["seq"] = 3
    path.write_text(json.dumps(doc))
    assert lab.verify().problem == Problem.ANCHOR_BAD_SIGNATURE
    # The anchor's file cannot stand in for the head (its own format, signed).
    path.write_text(lab.anchor.read_text())
    result = lab.verify()
    assert result.problem == Problem.ANCHOR_INVALID and str(path) in result.detail
    path.write_text(good)
    assert lab.verify().ok


def test_the_signed_head_catches_a_rewritten_record(lab):
    lab.fill(4)
    lab.ledger.seal()
    lab.delete_from(5)
    lab.ledger.anchor_path = None  # a writer that skips the anchor re-extends the chain
    lab.fill(1)
    lab.ledger.checkpoint()
    result = lab.verify()
    assert not result.ok and result.problem == Problem.ANCHOR_MISMATCH
    assert result.first_bad_seq == 5


# -- any suffix (the acceptance point of issue 12) --------------------------------------
# A ledger with a checkpoint every 7 seqs, sealed twice (each seal adds a checkpoint and
# the signed head), then UNSEALED newer records: deleting the newest k records, for every
# k from 1 to all of them, is found as soon as the deletion reaches a sealed record, and
# otherwise verify says how many records remain unanchored.
SUFFIX_EVERY, UNSEALED = 7, 3


def _suffix_template(tmp: Path) -> tuple[Path, int, int]:
    lab = Lab(tmp)
    lab.ledger.checkpoint_every = SUFFIX_EVERY
    lab.fill(10)
    lab.ledger.seal()
    lab.fill(9)
    sealed = lab.ledger.seal().seq
    lab.fill(UNSEALED)
    return lab.state, sealed, lab.ledger.head().seq


@pytest.fixture(scope="module")
def suffix_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, int]:
    return _suffix_template(tmp_path_factory.mktemp("suffix"))


SUFFIX_TOTAL = 27  # 22 appended, 3 periodic checkpoints (at 8, 15, 22), 2 seals (12, 24)


def test_the_suffix_template_spans_checkpoints_and_seals(suffix_template):
    state, sealed, total = suffix_template
    assert (total, sealed) == (SUFFIX_TOTAL, SUFFIX_TOTAL - UNSEALED)
    kinds = [r.kind for r in Lab.reopen(state).ledger.records()]
    assert kinds.count("checkpoint") == 5 and kinds[sealed - 1] == "checkpoint"


@pytest.mark.parametrize("k", range(1, SUFFIX_TOTAL + 1))
def test_deleting_any_suffix_that_reaches_a_sealed_record_is_found(suffix_template, tmp_path,
                                                                   k):
    state, sealed, total = suffix_template
    copy = tmp_path / "state"
    shutil.copytree(state, copy)
    lab = Lab.reopen(copy)
    lab.delete_from(total - k + 1)
    result = lab.verify()
    if total - k >= sealed:  # only unsealed records gone: not detectable, and said so
        assert result.ok and result.unanchored == total - k - sealed, result
        return
    assert not result.ok, f"deleting the newest {k} records went unnoticed"
    assert (result.problem, result.first_bad_seq) == (Problem.TRUNCATED, total - k + 1), \
        result.detail
