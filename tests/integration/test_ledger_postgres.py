"""The same ledger code on PostgreSQL: a real server started by the ``pg_url`` fixture
(Debian's PostgreSQL, loopback only, removed afterwards) and the psycopg driver."""

import threading

import pytest
from sqlalchemy import text

from aegis_controller import db
from aegis_controller.ledger import (
    Kind,
    Ledger,
    Problem,
    init_keys,
    load_signer,
    load_verifier,
    sealing,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def pg_ledger(tmp_path, pg_url):
    engine = db.open_engine(pg_url)
    db.upgrade(engine)
    private, public, _ = init_keys(tmp_path / "keys")
    ledger = Ledger(engine, signer=load_signer(private),
                    anchor_path=tmp_path / "ledger.anchor.json", checkpoint_every=10)
    yield ledger, load_verifier(public)
    engine.dispose()


def test_round_trip_and_tamper_on_postgres(pg_ledger):
    ledger, verifier = pg_ledger
    for i in range(25):
        ledger.append("order", f"node{i % 3}", {"i": i, "text": "ü"})
    result = ledger.verify(verifier)
    assert result.ok, result.detail
    assert (result.count, result.checkpoints, result.anchor["seq"]) == (27, 2, 21)
    with ledger.engine.begin() as conn:
        conn.execute(text("UPDATE ledger_records SET body = :b WHERE seq = 7"), {"b": '{"i":99}'})
    result = ledger.verify(verifier)
    assert (result.problem, result.first_bad_seq) == (Problem.EDITED, 7)


def test_concurrent_writers_on_postgres_retry_into_one_chain(pg_ledger):
    ledger, verifier = pg_ledger
    errors: list[BaseException] = []

    def write(name: str) -> None:
        try:
            for i in range(40):
                ledger.append("ack", "n1", {"w": name, "i": i}, actor=name)
        except BaseException as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=write, args=(f"w{n}",)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    result = ledger.verify(verifier)
    assert result.ok, result.detail
    records = list(ledger.records())
    assert [r.seq for r in records] == list(range(1, len(records) + 1))
    assert sum(r.kind != Kind.CHECKPOINT for r in records) == 160


def test_sealed_head_finds_deleted_newest_records_on_postgres(pg_ledger):
    ledger, verifier = pg_ledger
    ledger.checkpoint_every = 1000
    for i in range(50):
        ledger.append("order", f"node{i % 3}", {"i": i})
    with sealing(ledger, interval=3600):  # the shutdown seal
        pass
    result = ledger.verify(verifier)
    assert result.ok and result.unanchored == 0 and result.signed_head["seq"] == 51
    with ledger.engine.begin() as conn:
        conn.execute(text("DELETE FROM ledger_records WHERE seq >= 4"))
    result = ledger.verify(verifier)
    assert (result.problem, result.first_bad_seq) == (Problem.TRUNCATED, 4), result.detail
    assert "records 4 to 51 are missing" in result.detail
