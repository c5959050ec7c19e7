"""Group commit and parallel verify (issue 16): appends from many threads share commits,
yet every record is signed on its own and chained; a group that fails mid-way writes
nothing; signatures checked in worker processes give exactly the sequential verdict."""

from __future__ import annotations

import json
import sqlite3
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import event

from aegis_controller import db
from aegis_controller.ledger import Kind, Ledger, Problem, Signer, init_keys, load_signer
from aegis_controller.ledger.records import canonical, record_hash, stored_record_hash
from aegis_controller.ledger.verify import verify

pytestmark = pytest.mark.unit


@dataclass(frozen=True)
class GatedSigner(Signer):
    """The real key; signing the ``hold``-th record waits for ``release``; signing the
    ``fail``-th raises (counting every record signed, checkpoints included)."""

    hold: int = 0
    fail: int = 0
    held: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    calls: list[int] = field(default_factory=list)

    def sign_record(self, hash_hex: str) -> str:
        self.calls.append(1)
        n = len(self.calls)
        if n == self.hold:
            self.held.set()
            assert self.release.wait(30)
        if n == self.fail:
            raise OSError("disk gone while signing (test)")
        return super().sign_record(hash_hex)


def _ledger(tmp: Path, signer_kwargs: dict | None = None) -> tuple[Ledger, list[int]]:
    private, _, _ = init_keys(tmp / "keys")
    engine = db.open_engine(f"sqlite:///{tmp / 'c.db'}")
    db.upgrade(engine)
    signer = GatedSigner(load_signer(private).private, **(signer_kwargs or {}))
    commits: list[int] = []
    event.listen(engine, "commit", lambda _conn: commits.append(1))
    return Ledger(engine, signer=signer, anchor_path=tmp / "a.json", checkpoint_every=10), commits


def _append_in_threads(ledger: Ledger, n: int) -> tuple[list[threading.Thread], dict, dict]:
    results: dict[int, object] = {}
    errors: dict[int, BaseException] = {}

    def one(i: int) -> None:
        try:
            results[i] = ledger.append("order", f"node{i}", {"i": i})
        except BaseException as err:  # the test inspects it
            errors[i] = err

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    return threads, results, errors


def _wait_queued(ledger: Ledger, n: int) -> None:
    for _ in range(3000):
        with ledger._group._lock:
            if len(ledger._group._queue) >= n:
                return
        threading.Event().wait(0.01)
    raise AssertionError(f"{n} appends never queued")


def _chain_ok(ledger: Ledger) -> list:
    records = list(ledger.records())
    verifier = ledger.signer.verifier
    prev = "0" * 64
    for seq, r in enumerate(records, start=1):
        assert r.seq == seq and r.prev_hash == prev
        assert r.hash == record_hash(r.seq, r.ts, r.kind, r.subject, r.actor, r.body,
                                     r.prev_hash)
        assert verifier.record_ok(r.hash, r.sig), f"record {seq} not individually signed"
        prev = r.hash
    return records


def test_appends_that_arrive_during_a_commit_share_the_next_one(tmp_path):
    ledger, commits = _ledger(tmp_path, {"hold": 1})
    first, results, errors = _append_in_threads(ledger, 1)
    assert ledger.signer.held.wait(30)  # the first append is inside its transaction
    rest, more, more_errors = _append_in_threads(ledger, 24)
    _wait_queued(ledger, 24)
    commits.clear()
    ledger.signer.release.set()
    for t in first + rest:
        t.join(60)
    assert not errors and not more_errors
    # 1 commit for the first record, then the 24 queued ones (and 2 checkpoints) in one
    assert len(commits) == 2
    records = _chain_ok(ledger)
    assert len(records) == 25 + 2
    assert [r.seq for r in records if r.kind == Kind.CHECKPOINT] == [11, 21]
    stored = {r.seq: r for r in records}
    for record in [results[0], *more.values()]:
        assert stored[record.seq] == record  # each caller got its own committed record
    assert sorted(r.body["i"] for r in more.values()) == list(range(24))
    result = ledger.verify()
    assert result.ok and result.count == 27, result.detail


def test_a_group_that_fails_mid_way_writes_none_of_its_records(tmp_path):
    # record 1 is held while 6 appends queue; signing the 4th record (3rd of the group) fails
    ledger, _ = _ledger(tmp_path, {"hold": 1, "fail": 4})
    first, results, errors = _append_in_threads(ledger, 1)
    assert ledger.signer.held.wait(30)
    rest, more, more_errors = _append_in_threads(ledger, 6)
    _wait_queued(ledger, 6)
    ledger.signer.release.set()
    for t in first + rest:
        t.join(60)
    assert not errors and results[0].seq == 1
    assert not more and len(more_errors) == 6  # every caller of the group is told
    assert all("disk gone" in str(e) for e in more_errors.values())
    assert [r.seq for r in _chain_ok(ledger)] == [1]
    # The ledger goes on from its last committed record.
    after = ledger.append("order", "n", {"after": True})
    assert after.seq == 2 and after.prev_hash == results[0].hash
    assert ledger.verify().ok


def test_the_group_commit_lead_passes_on_under_steady_load(tmp_path):
    ledger, commits = _ledger(tmp_path)
    threads, results, errors = _append_in_threads(ledger, 60)
    for t in threads:
        t.join(60)
    assert not errors and len(results) == 60
    records = _chain_ok(ledger)
    assert sorted(r.body["i"] for r in records if r.kind == "order") == list(range(60))
    assert len(commits) <= 60
    assert ledger.verify().ok


@pytest.mark.parametrize("body", [
    {}, {"a": 1, "b": [1, 2.5, None, True]}, {"ü": "naïve ✓", "q": 'say "hi"\\n\t'},
    {"nested": {"kind": "x", "z": {"y": []}}, "\u2028": "\x00"}, {"big": 2**62, "neg": -1.5e-7},
])
def test_the_stored_body_hash_equals_the_canonical_record_hash(body):
    text = canonical(body).decode()
    args = (7, "2026-01-01T00:00:00.000Z", "order", 'sub"ject✓', "operator:ä", )
    assert stored_record_hash(*args, text, "ab" * 32) == record_hash(
        *args, json.loads(text), "ab" * 32)
    # a body stored in another encoding hashes differently (verify then decodes it)
    assert stored_record_hash(*args, json.dumps(body, indent=1), "ab" * 32) != record_hash(
        *args, body, "ab" * 32) or text == json.dumps(body, indent=1)


def _big_ledger(tmp: Path, n: int = 120) -> tuple[Ledger, Path]:
    private, _, _ = init_keys(tmp / "keys")
    engine = db.open_engine(f"sqlite:///{tmp / 'c.db'}")
    db.upgrade(engine)
    ledger = Ledger(engine, signer=load_signer(private), anchor_path=tmp / "a.json",
                    checkpoint_every=50)
    ledger.append_many([("order", f"n{i}", {"i": i}, None) for i in range(n)])
    return ledger, tmp / "c.db"


def _sql(path: Path, statement: str, params: tuple = ()) -> None:
    con = sqlite3.connect(path)
    try:
        con.execute(statement, params)
        con.commit()
    finally:
        con.close()


@pytest.fixture(autouse=True)
def _small_chunks(monkeypatch):
    monkeypatch.setattr(sys.modules["aegis_controller.ledger.verify"], "SIGNATURE_CHUNK", 8)


def _both(ledger: Ledger):
    parallel = verify(ledger, ledger.signer.verifier, workers=2, parallel_after=10, batch=7)
    sequential = verify(ledger, ledger.signer.verifier, workers=0)
    assert parallel == sequential
    return parallel


def test_parallel_verify_passes_a_good_ledger_like_the_sequential_one(tmp_path):
    ledger, _ = _big_ledger(tmp_path)
    result = _both(ledger)
    assert result.ok and result.count == 122 and result.checkpoints == 2


def test_parallel_verify_names_the_first_bad_signature(tmp_path):
    ledger, path = _big_ledger(tmp_path)
    forged = Ledger(ledger.engine, signer=load_signer(init_keys(tmp_path / "other")[0]))
    for seq in (90, 40):  # two bad ones, found by different chunks; the first is named
        digest = next(r.hash for r in ledger.records() if r.seq == seq)
        _sql(path, "UPDATE ledger_records SET sig = ? WHERE seq = ?",
             (forged.signer.sign_record(digest), seq))
    result = _both(ledger)
    assert (result.ok, result.problem, result.first_bad_seq, result.count) == (
        False, Problem.BAD_SIGNATURE, 40, 39)


def test_a_bad_signature_before_an_edit_is_named_first(tmp_path):
    ledger, path = _big_ledger(tmp_path)
    _sql(path, "UPDATE ledger_records SET sig = ? WHERE seq = 30", ("00" * 64,))
    _sql(path, "UPDATE ledger_records SET subject = 'x' WHERE seq = 35")
    result = _both(ledger)
    assert (result.problem, result.first_bad_seq) == (Problem.BAD_SIGNATURE, 30)
    _sql(path, "UPDATE ledger_records SET subject = 'x' WHERE seq = 20")
    result = _both(ledger)
    assert (result.problem, result.first_bad_seq) == (Problem.EDITED, 20)


@pytest.mark.parametrize("python", ["/bin/false", "/nonexistent/python"])
def test_signature_workers_that_die_or_never_start_leave_the_checking_to_verify(
        tmp_path, monkeypatch, python):
    ledger, path = _big_ledger(tmp_path)
    monkeypatch.setattr(sys, "executable", python)
    result = verify(ledger, ledger.signer.verifier, workers=2, parallel_after=10)
    assert result.ok and result.count == 122, result.detail
    _sql(path, "UPDATE ledger_records SET sig = ? WHERE seq = 77", ("00" * 64,))
    result = verify(ledger, ledger.signer.verifier, workers=2, parallel_after=10)
    assert (result.problem, result.first_bad_seq, result.count) == (
        Problem.BAD_SIGNATURE, 77, 76)


def test_a_column_rewritten_with_another_type_is_an_edit_not_a_crash(tmp_path):
    ledger, path = _big_ledger(tmp_path, n=5)
    _sql(path, "UPDATE ledger_records SET kind = 42 WHERE seq = 3")  # SQLite keeps the int
    result = verify(ledger, ledger.signer.verifier, workers=0)
    assert (result.problem, result.first_bad_seq) == (Problem.EDITED, 3)
