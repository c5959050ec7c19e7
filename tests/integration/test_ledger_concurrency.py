"""Several processes append to one SQLite ledger at once: the chain stays gap-free, every
record lands exactly once, periodic checkpoints and the anchor stay consistent."""

import subprocess
import sys
from collections import Counter

import pytest

from aegis_controller import db
from aegis_controller.ledger import Kind, Ledger, init_keys, load_verifier

pytestmark = pytest.mark.integration

WRITERS, EACH, EVERY = 4, 60, 25

WORKER = """
import sys
from pathlib import Path
from aegis_controller import db
from aegis_controller.ledger import Ledger, load_signer

url, key, anchor, name, n, every = sys.argv[1:7]
engine = db.open_engine(url)
db.upgrade(engine)
ledger = Ledger(engine, signer=load_signer(Path(key)), anchor_path=Path(anchor),
                checkpoint_every=int(every), actor=name)
for i in range(int(n)):
    ledger.append("order", f"node{i % 5}", {"writer": name, "i": i})
"""


def test_concurrent_appends_from_several_processes_make_one_gap_free_chain(tmp_path):
    private, public, _ = init_keys(tmp_path / "keys")
    url = f"sqlite:///{tmp_path / 'controller.db'}"
    anchor = tmp_path / "ledger.anchor.json"
    # No upgrade beforehand: the writers race to create the schema too.
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, url, str(private), str(anchor),
                               f"writer{w}", str(EACH), str(EVERY)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for w in range(WRITERS)]
    for proc in procs:
        _out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err

    ledger = Ledger(db.open_engine(url, must_exist=True), anchor_path=anchor)
    result = ledger.verify(load_verifier(public))
    assert result.ok, result.detail
    records = list(ledger.records())
    total = WRITERS * EACH
    checkpoints = [r for r in records if r.kind == Kind.CHECKPOINT]
    assert [r.seq for r in records] == list(range(1, len(records) + 1))
    assert len(records) == total + len(checkpoints)
    assert len(checkpoints) == (len(records)) // EVERY
    assert Counter(r.actor for r in records if r.kind == "order") == {
        f"writer{w}": EACH for w in range(WRITERS)}
    assert {(r.actor, r.body["i"]) for r in records if r.kind == "order"} == {
        (f"writer{w}", i) for w in range(WRITERS) for i in range(EACH)}
    # The anchor ends at the last checkpoint, whichever process wrote it.
    assert result.anchor["seq"] == checkpoints[-1].seq
