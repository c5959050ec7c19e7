"""``python -m benchmarks.console``: server-side render time of each operator console page
with ``--nodes`` nodes (500) and ``--events`` events (100,000) in the database.

Fills a throw-away SQLite state (nodes in every trust state, events spread over them, one
incident and one finished recovery job per five nodes, written as rows: the figures are
about reading them; the ledger holds only what the set-up wrote), starts a
real ``aegis-controller serve`` (mutual TLS), and asks each page ``--rounds`` times over
one keep-alive connection with an operator certificate. The server-side figure per page is
the controller's own: the mean of ``aegis_http_request_duration_seconds`` for that route
(sum / count, read from ``/metrics`` after the rounds), from the request's arrival to the
last byte of the answer, TLS excluded; the client's p50 beside it includes TLS and
loopback. Prints through :func:`benchmarks.figures.report`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from aegis_controller import db, tables
from aegis_controller.domain import open_controller
from aegis_controller.ledger import init_keys
from aegis_controller.nodes import NodeState
from aegis_controller.settings import Settings

from .figures import percentile, report
from .intake import _free_port, _up

TARGET = "<= 300 ms server-side"
STEPS = ("queued", "containing", "collecting", "replacing", "verifying", "enrolling", "trusted")
#: page label -> (path, route template as the metrics name it)
PAGES = {"fleet": ("/console/fleet", "/console/fleet"),
         "fleet_filtered": ("/console/fleet?state=suspect&sort=heartbeat&order=desc",
                            "/console/fleet"),
         "node": ("/console/nodes/n0000", "/console/nodes/{node_id}"),
         "incidents": ("/console/incidents", "/console/incidents"),
         "recovery": ("/console/recovery", "/console/recovery"),
         "access": ("/console/access", "/console/access"),
         "policies": ("/console/policies", "/console/policies"),
         "ledger": ("/console/ledger", "/console/ledger")}


def fill(state: Path, nodes: int, events: int) -> None:
    """``nodes`` nodes, ``events`` events, ``nodes // 5`` incidents each with a finished
    recovery job and its history, as rows."""
    ctl = open_controller(Settings.resolve(state))
    states = itertools.cycle([s.value for s in NodeState])
    now = int(time.time())
    measurement = json.dumps({"agent_version": "0.1.0", "kernel_release": "6.1.0-bench"})
    with db.transaction(ctl.engine) as conn:
        conn.execute(tables.nodes.insert(), [
            {"node_id": f"n{i:04d}", "state": next(states), "enrolled_at": now - 3600,
             "reason": f"attestation differs from the expected profile: file {i} changed",
             "heartbeat_at": now - i, "last_seen": now - i, "measurement": measurement}
            for i in range(nodes)])
        conn.execute(tables.incidents.insert(), [
            {"node_id": f"n{i:04d}", "rule": "denied-exec", "severity": "high",
             "event_id": str(uuid.uuid4()), "summary": "exec of /usr/bin/nc by pid 1 (uid 0)",
             "created_at": now - i} for i in range(0, nodes, 5)])
        jobs = [{"job_id": str(uuid.uuid4()), "node_id": f"n{i:04d}", "cause": "compromised",
                 "state": "trusted", "reason": "replaced", "flagged_at": now - i + 1.0,
                 "started_at": now - i + 2.0, "ended_at": now - i + 60.0, "data": "{}",
                 "step_pgids": "[]", "created_at": now - i + 1.0,
                 "updated_at": now - i + 60.0} for i in range(0, nodes, 5)]
        conn.execute(tables.recovery_jobs.insert(), jobs)
        conn.execute(tables.recovery_history.insert(), [
            {"job_id": job["job_id"], "seq": n, "at": job["flagged_at"] + n * 8.0,
             "state": state, "message": state, "fields": "{}"}
            for job in jobs for n, state in enumerate(STEPS)])
    rows = []
    for i in range(events):
        rows.append({"node_id": f"n{i % nodes:04d}", "event_id": str(uuid.uuid4()),
                     "ts_ns": i, "kind": "exec", "severity": "info", "received_at": now,
                     "data": json.dumps({"filename": "/usr/bin/true", "pid": i})})
        if len(rows) == 10000 or i == events - 1:
            with db.transaction(ctl.engine) as conn:
                conn.execute(tables.events.insert(), rows)
            rows = []
    ctl.engine.dispose()


def _totals(text: str) -> dict[tuple[str, str], tuple[float, float]]:
    """(route, method) -> (seconds, count) of its 2xx answers, from the controller's
    ``aegis_http_request_duration_seconds`` histogram."""
    sums: dict[tuple[str, str], float] = {}
    counts: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "aegis_http_request_duration_seconds":
            continue
        for sample in family.samples:
            if sample.labels.get("status") != "2xx":
                continue
            key = (sample.labels["route"], sample.labels["method"])
            if sample.name.endswith("_sum"):
                sums[key] = sample.value
            elif sample.name.endswith("_count"):
                counts[key] = sample.value
    return {k: (sums[k], counts.get(k, 0.0)) for k in sums}


def _mean(before: dict[tuple[str, str], tuple[float, float]],
          after: dict[tuple[str, str], tuple[float, float]], key: tuple[str, str]) -> float:
    """Mean seconds of the answers of ``key`` between two scrapes."""
    s0, n0 = before.get(key, (0.0, 0.0))
    s1, n1 = after.get(key, (0.0, 0.0))
    return (s1 - s0) / (n1 - n0) if n1 > n0 else 0.0


def run(nodes: int, events: int, rounds: int) -> tuple[dict[str, float], dict[str, float]]:
    state = Path(tempfile.mkdtemp(prefix="aegis-bench-console-"))
    ctl = [sys.executable, "-m", "aegis_controller.cli", "--state-dir", str(state)]
    proc = None
    try:
        init_keys(state / "keys")
        t0 = time.perf_counter()
        fill(state, nodes, events)
        filled = time.perf_counter() - t0
        subprocess.run([*ctl, "operator-cert", "bench", "--out", str(state / "ops")],
                       check=True, capture_output=True)
        port = _free_port()
        proc = subprocess.Popen([*ctl, "serve", "--port", str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"https://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while not _up(url, state):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("the controller did not start")
            time.sleep(0.1)
        ctx = ssl.create_default_context(cafile=state / "ca" / "ca.pem")
        ctx.load_cert_chain(state / "ops/operator-bench.pem", state / "ops/operator-bench.key")
        client: dict[str, list[float]] = {}
        server: dict[str, float] = {}
        with httpx.Client(base_url=url, verify=ctx, timeout=60) as c:
            # one page per run of the histogram: fleet and fleet_filtered share a route
            for label, (path, route) in PAGES.items():
                before = _totals(c.get("/metrics").text)
                times = []
                for _ in range(rounds):
                    t = time.perf_counter()
                    r = c.get(path)
                    times.append(time.perf_counter() - t)
                    if r.status_code != 200:
                        raise SystemExit(f"{path}: {r.status_code} {r.text[:300]}")
                client[label] = times
                server[label] = _mean(before, _totals(c.get("/metrics").text), (route, "GET"))
            token = c.get("/console/ledger").headers["x-csrf-token"]
            before = _totals(c.get("/metrics").text)
            t = time.perf_counter()
            r = c.post("/console/ledger/verify", headers={"x-csrf-token": token})
            verify_client = time.perf_counter() - t
            if r.status_code != 200 or "Intact" not in r.text:
                raise SystemExit(f"ledger verify: {r.status_code} {r.text[:300]}")
            server["ledger_verify"] = _mean(before, _totals(c.get("/metrics").text),
                                            ("/console/ledger/verify", "POST"))
        figures = {f"{k}_server_ms": round(v * 1000, 1) for k, v in server.items()}
        notes = {f"{k}_client_p50_ms": round(percentile(v, 0.5) * 1000, 1)
                 for k, v in client.items()}
        notes.update(ledger_verify_client_ms=round(verify_client * 1000, 1),
                     nodes=nodes, events=events, rounds=rounds, fill_s=round(filled, 1),
                     load_1min=os.getloadavg()[0], cpus=os.cpu_count())
        return figures, notes
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
        shutil.rmtree(state, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=500)
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--rounds", type=int, default=10)
    args = p.parse_args(argv)
    if args.nodes < 1 or args.events < 0 or args.rounds < 1:
        p.error("--nodes and --rounds must be >= 1, --events >= 0")
    figures, notes = run(args.nodes, args.events, args.rounds)
    report("console", figures, title=f"console pages, server-side mean per page, "
           f"{args.nodes} nodes and {args.events:,} events (SQLite):",
           targets=dict.fromkeys((k for k in figures if k != "ledger_verify_server_ms"),
                                 TARGET), notes=notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
