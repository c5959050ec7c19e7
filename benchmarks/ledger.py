"""Ledger throughput on this machine: ``python -m benchmarks.ledger``.

Four figures, each on a fresh SQLite ledger in a temporary directory (or ``--dir``),
with real keys and the default checkpoint interval (so checkpoints and anchor writes
are included):

* append, one writer, one commit (fsync) per record, one record at a time
* append, ``--threads`` writers each appending one record at a time and waiting for its
  commit (what the controller's request threads do): group commit writes what arrives
  during a commit in the next one
* append, one writer, ``--batch`` records per transaction
* verify (hash, link and signature of every record, streamed, signatures in one worker
  process per CPU), over the batched ledger; the notes give the CPU time of one Ed25519
  verify here (libsodium's, which verify uses, and OpenSSL's beside it) and the ceiling it
  sets (CPUs / that time)

Prints through :func:`benchmarks.figures.report`: a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import event

from aegis_controller import db
from aegis_controller.ledger import (
    DEFAULT_CHECKPOINT_EVERY,
    Ledger,
    init_keys,
    load_signer,
    load_verifier,
)
from aegis_controller.sigbatch import default_workers
from aegis_controller.sigcheck import Ed25519Check

from .figures import report

TARGETS = {
    "append_single_per_s": "-- (one writer waits for each fsync)",
    "append_grouped_per_s": ">= 5,000 (group commit)",
    "verify_per_s": ">= 50,000",
}


def _body(i: int) -> dict[str, object]:
    return {"node": f"node{i % 50}", "from": "trusted", "to": "suspect", "i": i,
            "reason": "exec of /tmp/x not in allow-list", "event": f"ev-{i:08d}"}


def _ledger(where: Path, name: str, every: int) -> Ledger:
    private = where / "keys" / "ledger.key"
    if not private.exists():
        init_keys(where / "keys")
    engine = db.open_engine(f"sqlite:///{where / name}.db")
    db.upgrade(engine)
    return Ledger(engine, signer=load_signer(private), anchor_path=where / f"{name}.anchor.json",
                  checkpoint_every=every)


def _filesystem(path: Path) -> str:
    proc = subprocess.run(["df", "--output=fstype", str(path)], capture_output=True, text=True,
                          check=False)
    lines = proc.stdout.split()
    return lines[-1] if proc.returncode == 0 and lines else "unknown"


def _grouped(ledger: Ledger, total: int, threads: int) -> tuple[float, int, float]:
    """Seconds for ``threads`` threads to append ``total`` records one at a time, the
    number of commits that took, and the CPU seconds this process spent on it."""
    commits = [0]

    def count(_conn: object) -> None:
        commits[0] += 1

    event.listen(ledger.engine, "commit", count)
    share = [total // threads + (t < total % threads) for t in range(threads)]
    start = threading.Barrier(threads + 1)

    def writer(t: int) -> None:
        start.wait()
        for i in range(share[t]):
            ledger.append("state_change", f"node{t}", _body(t * 1_000_000 + i))

    pool = [threading.Thread(target=writer, args=(t,)) for t in range(threads)]
    for thread in pool:
        thread.start()
    start.wait()
    started, cpu = time.perf_counter(), time.process_time()
    for thread in pool:
        thread.join()
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    event.remove(ledger.engine, "commit", count)
    return elapsed, commits[0], cpu


def _ed25519_verify_us(n: int = 2000) -> tuple[float, float]:
    """CPU microseconds of one Ed25519 verify in this process: the ledger's check
    (libsodium, :mod:`aegis_controller.sigcheck`) and cryptography's (OpenSSL), its peer."""
    key = Ed25519PrivateKey.generate()
    public, message = key.public_key(), b"aegis-ledger-record/1\0" + bytes(32)
    signature = key.sign(message)
    check = Ed25519Check.of(public)
    started = time.process_time()
    for _ in range(n):
        check.ok(signature, message)
    libsodium = time.process_time() - started
    started = time.process_time()
    for _ in range(n):
        public.verify(signature, message)
    openssl = time.process_time() - started
    return libsodium / n * 1e6, openssl / n * 1e6


def run(records: int, single: int, batch: int, every: int, where: Path,
        threads: int) -> dict[str, object]:
    ledger = _ledger(where, "single", every)
    started = time.perf_counter()
    for i in range(single):
        ledger.append("state_change", f"node{i % 50}", _body(i))
    single_s = time.perf_counter() - started

    grouped_s, commits, grouped_cpu = _grouped(_ledger(where, "grouped", every), single, threads)

    ledger = _ledger(where, "batched", every)
    started = time.perf_counter()
    for first in range(0, records, batch):
        ledger.append_many([("state_change", f"node{i % 50}", _body(i), None)
                            for i in range(first, min(first + batch, records))])
    batched_s = time.perf_counter() - started

    started = time.perf_counter()
    result = ledger.verify(load_verifier(where / "keys" / "ledger.pub"))
    verify_s = time.perf_counter() - started
    if not result.ok:
        raise SystemExit(f"benchmarks.ledger: the fresh ledger did not verify: {result.detail}")
    grouped = _ledger(where, "grouped", every).verify(load_verifier(where / "keys" / "ledger.pub"))
    if not grouped.ok or grouped.count < single:
        raise SystemExit(f"benchmarks.ledger: the group-committed ledger did not verify: "
                         f"{grouped.detail or grouped.count}")
    verify_us, openssl_us = _ed25519_verify_us()
    return {
        "append_single_per_s": round(single / single_s),
        "append_single_records": single,
        "append_grouped_per_s": round(single / grouped_s),
        "append_grouped_threads": threads,
        "append_grouped_commits": commits,
        "append_batched_per_s": round(records / batched_s),
        "append_batched_records": records,
        "batch": batch,
        "verify_per_s": round(result.count / verify_s),
        "verify_records": result.count,
        "checkpoint_every": every,
        # CPU per record of the group-commit run (all threads): what a free core sustains
        "append_grouped_cpu_us": round(grouped_cpu / single * 1e6, 1),
        "signature_workers": default_workers(),
        "ed25519_verify_cpu_us": round(verify_us, 1),
        "ed25519_verify_cpu_us_openssl": round(openssl_us, 1),
        "verify_ceiling_per_s": round((os.cpu_count() or 1) * 1e6 / verify_us),
        "db_bytes": (where / "batched.db").stat().st_size,
        "filesystem": _filesystem(where),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ledger",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=20_000,
                        help="records for the batched append and verify (default 20000)")
    parser.add_argument("--single", type=int, default=None,
                        help="records for commit-per-record append (default: --records)")
    parser.add_argument("--batch", type=int, default=500, help="records per transaction")
    parser.add_argument("--threads", type=int, default=32,
                        help="writer threads of the group-commit figure (default 32)")
    parser.add_argument("--checkpoint-every", type=int, default=DEFAULT_CHECKPOINT_EVERY)
    parser.add_argument("--dir", type=Path, help="where to put the databases (default: a "
                        "temporary directory, removed afterwards)")
    args = parser.parse_args(argv)
    if min(args.records, args.batch, args.checkpoint_every, args.single or 1, args.threads) < 1:
        parser.error("--records, --single, --batch, --threads and --checkpoint-every must be "
                     "1 or more")
    single = args.single or args.records
    if args.dir:
        args.dir.mkdir(parents=True, exist_ok=True)
        if any(args.dir.iterdir()):
            parser.error(f"--dir {args.dir} is not empty")
        figures = run(args.records, single, args.batch, args.checkpoint_every, args.dir,
                      args.threads)
    else:
        where = Path(tempfile.mkdtemp(prefix="aegis-bench-ledger-"))
        try:
            figures = run(args.records, single, args.batch, args.checkpoint_every, where,
                          args.threads)
        finally:
            shutil.rmtree(where, ignore_errors=True)
    rates = ("append_single_per_s", "append_single_records", "append_grouped_per_s",
             "append_grouped_threads", "append_grouped_commits", "append_batched_per_s",
             "append_batched_records", "verify_per_s", "verify_records")
    report("ledger", {k: figures[k] for k in rates},
           title=f"ledger benchmark: SQLite (WAL, synchronous=FULL) on {figures['filesystem']}, "
                 f"checkpoint every {args.checkpoint_every}, Python {figures['python']}",
           targets=TARGETS, notes={k: v for k, v in figures.items() if k not in rates})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
