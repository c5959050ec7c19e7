"""``python -m benchmarks.intake``: events per second the controller stores.

Starts a real ``aegis-controller serve`` (uvicorn, mutual TLS, SQLite in a throw-away
state directory), enrolls a node, then posts ``--events`` events in batches of
``--batch`` over one keep-alive connection with the node's client certificate, and
then the same batches again (all duplicates). Prints events/s for both and one JSON
line (through :func:`benchmarks.figures.report`). ``--db-url`` runs it on another
database (e.g. ``postgresql+psycopg://...``; an empty database the controller migrates).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aegis_controller.ledger import init_keys
from aegis_protocol import routes
from aegis_protocol.enrollment import node_csr
from aegis_protocol.events import Event, EventBatch
from aegis_protocol.files import key_pem
from aegis_protocol.signing import public_key_text

from .figures import report

TARGETS = {"new_events_per_s": ">= 25,000 on SQLite, higher on PostgreSQL"}


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the process ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(total: int, batch: int, db_url: str | None = None) -> dict[str, float]:
    state = Path(tempfile.mkdtemp(prefix="aegis-bench-intake-"))
    ctl = [sys.executable, "-m", "aegis_controller.cli", "--state-dir", str(state)]
    env = {**os.environ, "AEGIS_CONTROLLER_DB": db_url} if db_url else None
    proc = None
    try:
        init_keys(state / "keys")
        port = _free_port()
        proc = subprocess.Popen([*ctl, "serve", "--port", str(port)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"https://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while not (state / "ca" / "ca.pem").exists() or not _up(url, state):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("the controller did not start")
            time.sleep(0.1)
        token = subprocess.run([*ctl, "token", "issue", "bench1", "--no-wrap"], env=env,
                               capture_output=True, text=True, check=True).stdout.strip()
        key = ec.generate_private_key(ec.SECP256R1())  # the node's TLS key, as the agent makes it
        identity = public_key_text(Ed25519PrivateKey.generate().public_key())
        ctx = ssl.create_default_context(cafile=state / "ca" / "ca.pem")
        with httpx.Client(base_url=url, verify=ctx) as c:
            r = c.post(routes.ENROLL, json={"node_id": "bench1", "token": token,
                                           "csr_pem": node_csr(key, "bench1"),
                                           "identity_key": identity})
            r.raise_for_status()
        (state / "node.pem").write_text(r.json()["certificate_pem"])
        (state / "node.key").write_bytes(key_pem(key))
        ctx.load_cert_chain(state / "node.pem", state / "node.key")
        events = [Event(ts_ns=i, kind="exec", data={"pid": i, "filename": "/usr/bin/true"})
                  for i in range(total)]
        bodies = [EventBatch(node_id="bench1", events=events[i:i + batch]).model_dump(mode="json")
                  for i in range(0, total, batch)]
        rates, cpu = {}, {}
        with httpx.Client(base_url=url, verify=ctx, timeout=60) as c:
            for label in ("new", "duplicate"):
                cpu0 = _cpu_s(proc.pid)
                t0 = time.perf_counter()
                counted = 0
                for body in bodies:
                    ack = c.post(routes.EVENTS, json=body).json()
                    counted += ack["stored"] if label == "new" else ack["duplicates"]
                wall = time.perf_counter() - t0
                if counted != total:
                    raise SystemExit(f"{label}: {counted} of {total} events acknowledged")
                rates[label] = total / wall
                cpu[label] = (_cpu_s(proc.pid) - cpu0) / total * 1e6
        return {"events": total, "batch": batch, "new_events_per_s": round(rates["new"]),
                "duplicate_events_per_s": round(rates["duplicate"]),
                "controller_cpu_us_per_new_event": round(cpu["new"], 1),
                "controller_cpu_us_per_duplicate": round(cpu["duplicate"], 1)}
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
        shutil.rmtree(state, ignore_errors=True)


def _up(url: str, state: Path) -> bool:
    try:
        ctx = ssl.create_default_context(cafile=state / "ca" / "ca.pem")
        return httpx.get(f"{url}/healthz", verify=ctx, timeout=1).status_code == 200
    except (httpx.HTTPError, OSError):
        return False


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=20000)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--db-url", help="the controller's database (default: SQLite in the "
                   "throw-away state directory)")
    args = p.parse_args(argv)
    if args.events < 1 or not 1 <= args.batch <= 1000:
        p.error("--events must be >= 1 and --batch between 1 and 1000")
    r = run(args.events, args.batch, args.db_url)
    database = "SQLite" if not args.db_url else args.db_url.split(":", 1)[0].split("+")[0]
    report("intake", {"new_events_per_s": r["new_events_per_s"],
                      "duplicate_events_per_s": r["duplicate_events_per_s"]},
           title=f"event intake over mutual TLS, {database}, batches of {r['batch']}:",
           targets=TARGETS, notes={"events": r["events"], "batch": r["batch"],
                                   "database": database,
                                   # CPU of the controller process (TLS, HTTP, validation,
                                   # storage): what a core buys when the machine is shared
                                   **{k: v for k, v in r.items() if k.startswith("controller_")}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
