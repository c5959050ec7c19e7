"""``python -m benchmarks.intake``: events per second the controller stores.

Starts a real ``aegis-controller serve`` (uvicorn, mutual TLS, SQLite in a throw-away
state directory) and enrolls ``--nodes`` nodes. Then: one node posts ``--events`` events
in batches of ``--batch`` over one keep-alive connection with its client certificate, and
the same batches again (all duplicates); then every node at once, each over its own
connection, posts ``--events`` new events between them — how a controller meets a fleet.
The request bodies are encoded before the clock starts (an agent encodes its batch on its
own node; the client here shares the controller's two cores). Prints events/s for each
phase, the controller's CPU per event, and one JSON line (through
:func:`benchmarks.figures.report`). ``--db-url`` runs it on another database (e.g.
``postgresql+psycopg://...``; an empty database the controller migrates); ``--postgres``
starts a throw-away PostgreSQL with fsync on, as in production, and runs it there.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from harness_pg import postgres_server  # the tests' throw-away PostgreSQL

TARGETS = {"new_events_per_s": ">= 25,000 on SQLite, higher on PostgreSQL",
           "fleet_new_events_per_s": ">= 25,000 on SQLite, higher on PostgreSQL"}


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the process ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bodies(node: str, count: int, batch: int, first: int) -> list[bytes]:
    """``count`` new exec events of ``node`` as encoded EventBatch bodies."""
    events = [Event(ts_ns=first + i, kind="exec",
                    data={"pid": first + i, "filename": "/usr/bin/true"})
              for i in range(count)]
    return [json.dumps(EventBatch(node_id=node, events=events[i:i + batch])
                       .model_dump(mode="json")).encode()
            for i in range(0, count, batch)]


def _post_all(client: httpx.Client, bodies: list[bytes], key: str) -> int:
    """Post every body; the sum of the acknowledgments' ``key``."""
    counted = 0
    for body in bodies:
        r = client.post(routes.EVENTS, content=body,
                        headers={"content-type": "application/json"})
        r.raise_for_status()
        counted += r.json()[key]
    return counted


def _enroll(url: str, state: Path, ctl: list[str], env: dict | None,
            node: str) -> ssl.SSLContext:
    """Enroll ``node``; its client TLS context."""
    token = subprocess.run([*ctl, "token", "issue", node, "--no-wrap"], env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    key = ec.generate_private_key(ec.SECP256R1())  # the node's TLS key, as the agent makes it
    identity = public_key_text(Ed25519PrivateKey.generate().public_key())
    ctx = ssl.create_default_context(cafile=state / "ca" / "ca.pem")
    with httpx.Client(base_url=url, verify=ctx) as c:
        r = c.post(routes.ENROLL, json={"node_id": node, "token": token,
                                       "csr_pem": node_csr(key, node),
                                       "identity_key": identity})
        r.raise_for_status()
    (state / f"{node}.pem").write_text(r.json()["certificate_pem"])
    (state / f"{node}.key").write_bytes(key_pem(key))
    ctx.load_cert_chain(state / f"{node}.pem", state / f"{node}.key")
    return ctx


def _fleet_phase(url: str, contexts: list[ssl.SSLContext], fleet: list[list[bytes]],
                 pid: int) -> tuple[int, float, float]:
    """Every node posts its bodies at once, each over its own connection: events stored,
    wall seconds, controller CPU seconds."""
    clients = [httpx.Client(base_url=url, verify=ctx, timeout=60) for ctx in contexts]
    try:
        for c in clients:  # the connections are made before the clock starts
            c.get(routes.NODE_SELF).raise_for_status()
        stored = [0] * len(clients)
        start = threading.Barrier(len(clients) + 1)

        def post(n: int) -> None:
            start.wait()
            stored[n] = _post_all(clients[n], fleet[n], "stored")

        threads = [threading.Thread(target=post, args=(n,)) for n in range(len(clients))]
        for t in threads:
            t.start()
        cpu0 = _cpu_s(pid)
        start.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        return sum(stored), time.perf_counter() - t0, _cpu_s(pid) - cpu0
    finally:
        for c in clients:
            c.close()


def run(total: int, batch: int, db_url: str | None = None,
        nodes: int = 4) -> dict[str, float]:
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
        names = [f"bench{n + 1}" for n in range(nodes)]
        contexts = [_enroll(url, state, ctl, env, name) for name in names]
        one = _bodies(names[0], total, batch, 0)
        share = -(-total // nodes)
        fleet = [_bodies(name, share, batch, total + n * share) for n, name in enumerate(names)]
        out: dict[str, float] = {"events": total, "batch": batch, "nodes": nodes}
        with httpx.Client(base_url=url, verify=contexts[0], timeout=60) as c:
            for label, key in (("new", "stored"), ("duplicate", "duplicates")):
                cpu0, t0 = _cpu_s(proc.pid), time.perf_counter()
                counted = _post_all(c, one, key)
                wall = time.perf_counter() - t0
                if counted != total:
                    raise SystemExit(f"{label}: {counted} of {total} events acknowledged")
                out[f"{label}_events_per_s"] = round(total / wall)
                out[f"controller_cpu_us_per_{label}_event"] = round(
                    (_cpu_s(proc.pid) - cpu0) / total * 1e6, 1)
        stored, wall, cpu = _fleet_phase(url, contexts, fleet, proc.pid)
        if stored != share * nodes:
            raise SystemExit(f"fleet: {stored} of {share * nodes} events acknowledged")
        out["fleet_new_events_per_s"] = round(stored / wall)
        out["controller_cpu_us_per_fleet_event"] = round(cpu / stored * 1e6, 1)
        return out
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
    p.add_argument("--nodes", type=int, default=4,
                   help="nodes posting at once in the fleet phase (default 4)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--db-url", help="the controller's database (default: SQLite in the "
                       "throw-away state directory)")
    where.add_argument("--postgres", action="store_true", help="a throw-away PostgreSQL "
                       "(fsync on) started for the run")
    args = p.parse_args(argv)
    if args.events < 1 or not 1 <= args.batch <= 1000 or not 1 <= args.nodes <= 64:
        p.error("--events must be >= 1, --batch between 1 and 1000, --nodes between 1 and 64")
    with contextlib.ExitStack() as stack:
        url = args.db_url
        if args.postgres:
            url = stack.enter_context(stack.enter_context(
                postgres_server("aegis-bench-intake", durable=True)).database())
        r = run(args.events, args.batch, url, args.nodes)
    database = "SQLite" if not url else url.split(":", 1)[0].split("+")[0]
    report("intake", {"new_events_per_s": r["new_events_per_s"],
                      "duplicate_events_per_s": r["duplicate_events_per_s"],
                      "fleet_new_events_per_s": r["fleet_new_events_per_s"]},
           title=f"event intake over mutual TLS, {database}, batches of {r['batch']} "
                 f"(new and duplicate: one node; fleet: {r['nodes']} nodes at once):",
           targets=TARGETS, notes={"events": r["events"], "batch": r["batch"],
                                   "nodes": r["nodes"], "database": database,
                                   # CPU of the controller process (TLS, HTTP, validation,
                                   # storage): what a core buys when the machine is shared
                                   **{k: v for k, v in r.items() if k.startswith("controller_")}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
