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


GROUPED = """
import sys, threading
from pathlib import Path
from aegis_controller import db
from aegis_controller.ledger import Ledger, load_signer

url, key = sys.argv[1:3]
engine = db.open_engine(url)
db.upgrade(engine)
ledger = Ledger(engine, signer=load_signer(Path(key)), checkpoint_every=25)
out = threading.Lock()

def writer(t):
    for i in range(100000):
        record = ledger.append("order", f"node{t}", {"t": t, "i": i})
        with out:  # told it is committed: say so
            sys.stdout.write(f"{record.seq} {record.hash}\\n")
            sys.stdout.flush()

for t in range(16):
    threading.Thread(target=writer, args=(t,), daemon=True).start()
threading.Event().wait()
"""


def test_every_group_committed_record_a_writer_was_told_of_survives_kill_9(tmp_path):
    """Group commit (issue 16): 16 threads append, each printing a record once append()
    returned it; after kill -9 every printed record is in the database with its hash, the
    chain verifies, and a new writer continues it."""
    private, public, _ = init_keys(tmp_path / "keys")
    url = f"sqlite:///{tmp_path / 'controller.db'}"
    proc = subprocess.Popen([sys.executable, "-c", GROUPED, url, str(private)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    told: dict[int, str] = {}
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            seq, digest = line.split()
            told[int(seq)] = digest
            if len(told) >= 400:
                break
    finally:
        proc.kill()  # SIGKILL, mid-group
        rest, err = proc.communicate(timeout=60)
    assert len(told) >= 400, err[-2000:]
    for line in rest.splitlines():
        fields = line.split()
        if len(fields) == 2 and len(fields[1]) == 64:  # a line cut by the kill is no news
            told[int(fields[0])] = fields[1]
    ledger = Ledger(db.open_engine(url, must_exist=True))
    stored = {r.seq: r.hash for r in ledger.records()}
    assert {seq: stored.get(seq) for seq in told} == told
    result = ledger.verify(load_verifier(public))
    assert result.ok, result.detail
    after = subprocess.run([sys.executable, "-c", WORKER, url, str(private),
                            str(tmp_path / "a.json"), "after", "5", "25"],
                           capture_output=True, text=True, timeout=120, check=False)
    assert after.returncode == 0, after.stderr[-2000:]
    result = Ledger(db.open_engine(url, must_exist=True)).verify(load_verifier(public))
    assert result.ok and result.count >= len(stored) + 5, result.detail
