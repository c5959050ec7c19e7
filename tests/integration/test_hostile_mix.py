"""A hostile-client mix against a live controller while real nodes keep working (issue 12,
acceptance): for 30 s, clients send oversized bodies without certificates, half requests
(slowloris), bogus enrollment tokens, malformed JSON and huge event batches with a valid
node certificate, and replays (a spent token, an attestation report, an order ack, an
event batch) — while the operator keeps issuing tokens (its CLI) and placing orders, and
new nodes keep enrolling, attesting, forwarding events and running orders through the
agent's own uplink code (``aegis_agent.uplink.Uplink``), each from its own loopback address.

Then: the controller is still up, its peak memory (VmHWM) stayed under 300 MB, every
legitimate request succeeded (a 503 "busy" may be retried, as the agent does), nothing
answered 5xx but 503, and every state change has its ledger record (`ledger verify`
passes; enrollments, certificate serials, node states, orders and acknowledgments, token
refusals all match the ledger). Figures are printed (``pytest -s``).

Loopback only; each hostile kind comes from its own 127.0.0.x source, as an attacker's
many connections would, so the per-source caps act on it and not on the nodes.
"""

from __future__ import annotations

import json
import secrets
import select
import shutil
import signal
import ssl
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from aegis_agent.config import ControllerConfig
from aegis_agent.measure import collect, signed_report
from aegis_agent.orders import FileReplayGuard, OrderExecutor
from aegis_agent.spool import Spool
from aegis_agent.uplink import Uplink, UplinkError
from aegis_controller.pki import new_key
from aegis_protocol import routes
from aegis_protocol.enrollment import node_csr
from aegis_protocol.events import MAX_BATCH, Event, EventBatch, agent_event
from aegis_protocol.signing import load_public_key, public_key_text
from harness_controller import (
    Node,
    Server,
    closed,
    enroll,
    new_node,
    raw_tls,
    read_answer,
    upload,
)

pytestmark = pytest.mark.integration

DURATION = 30.0
PEAK_LIMIT_KB = 300 * 1024
MAX_NODES = 12  # real nodes enrolled during the run (one every 1.5 s)
SEAL_INTERVAL = 5  # the ledger is sealed during the run too
MiB = 1024 * 1024


# -- bookkeeping ---------------------------------------------------------------------------
@dataclass
class Tally:
    """What every client did and got, shared by the threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    ops: Counter[str] = field(default_factory=Counter)  # legitimate operations
    first_try: Counter[str] = field(default_factory=Counter)  # of them, right first time
    failed: list[str] = field(default_factory=list)  # legitimate operations that never did
    legit_status: Counter[int] = field(default_factory=Counter)  # every legit HTTP answer
    retries: Counter[str] = field(default_factory=Counter)  # why a legit attempt was retried
    hostile: Counter[tuple[str, str]] = field(default_factory=Counter)  # (kind, outcome)
    errors: list[str] = field(default_factory=list)  # a thread that died
    local: threading.local = field(default_factory=threading.local)

    def answer(self, response: httpx.Response) -> None:
        with self.lock:
            self.legit_status[response.status_code] += 1
        getattr(self.local, "statuses", []).append(response.status_code)

    def hit(self, kind: str, outcome: object) -> None:
        with self.lock:
            self.hostile[(kind, str(outcome))] += 1

    def legit(self, name: str, step: Callable[[], Any], until: float) -> Any:
        """Run one legitimate operation; retried (as the agent does, after Retry-After)
        only when the controller said it was busy (503); else it must succeed."""
        attempt = 0
        while True:
            self.local.statuses = []
            try:
                result = step()
            except (httpx.HTTPError, UplinkError, OSError) as e:
                busy = 503 in self.local.statuses
                with self.lock:
                    self.retries[f"{name}: {'503' if busy else type(e).__name__}"] += 1
                if busy and time.monotonic() < until:
                    attempt += 1
                    time.sleep(2)
                    continue
                with self.lock:
                    self.ops[name] += 1
                    self.failed.append(f"{name}: {type(e).__name__}: {e} "
                                       f"(answers {self.local.statuses})")
                return None
            with self.lock:
                self.ops[name] += 1
                self.first_try[name] += attempt == 0
            return result


def _transport(ctx: ssl.SSLContext, source: str) -> httpx.HTTPTransport:
    return httpx.HTTPTransport(verify=ctx, local_address=source)


@dataclass
class CountedUplink(Uplink):
    """The agent's uplink, connecting from its node's own loopback address and counting
    the controller's answers; everything else is the agent's code."""

    source: str = "127.0.0.1"
    tally: Tally | None = None

    def _client(self, with_cert: bool = True) -> httpx.Client:
        hooks = {"response": [self.tally.answer]} if self.tally else {}
        return httpx.Client(base_url=self.cfg.url, transport=_transport(
            self._ctx(with_cert), self.source), timeout=30, event_hooks=hooks)


# -- the controller ------------------------------------------------------------------------
@pytest.fixture
def live(run_prefix: str) -> Iterator[Server]:
    state = Path(tempfile.mkdtemp(prefix=f"{run_prefix}hostile-ctl-"))
    srv = Server(state, None)
    try:
        assert srv.ctl("keys", "init").returncode == 0
        srv.start("--ledger-seal-interval", str(SEAL_INTERVAL))
        yield srv
    finally:
        if srv.proc is not None:
            srv.kill()
        shutil.rmtree(state, ignore_errors=True)


def _peak_kb(pid: int) -> tuple[int, int]:
    """(VmHWM, VmRSS) of ``pid`` in kB."""
    fields = dict(line.split(":", 1) for line in
                  Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmHWM"].split()[0]), int(fields["VmRSS"].split()[0])


def _operator(srv: Server) -> httpx.Client:
    out = srv.ctl("operator-cert", "mix", "--out", str(srv.state / "ops"))
    assert out.returncode == 0, out.stderr
    ctx = srv.ca
    ctx.load_cert_chain(srv.state / "ops/operator-mix.pem", srv.state / "ops/operator-mix.key")
    return httpx.Client(base_url=srv.url, transport=_transport(ctx, "127.0.2.1"), timeout=30)


def _node_client(srv: Server, node: Node, source: str) -> httpx.Client:
    ctx = srv.ca
    ctx.load_cert_chain(node.cert_file, node.key_file)
    return httpx.Client(base_url=srv.url, transport=_transport(ctx, source), timeout=30)


# -- real nodes ----------------------------------------------------------------------------
@dataclass
class RealNode:
    node_id: str
    uplink: CountedUplink
    sent: set[str] = field(default_factory=set)  # ids of the events it spooled


def _real_node(srv: Server, tally: Tally, i: int, root: Path, stop: threading.Event,
               nodes: list[RealNode], until: float) -> None:
    node_id = f"real-{i:02d}"
    home = root / node_id
    home.mkdir()
    token = tally.legit("operator: token issue (CLI)", lambda: srv.token(node_id), until)
    (home / "token").write_text(token)
    cfg = ControllerConfig(url=srv.url, ca_file=srv.state / "ca" / "ca.pem",
                           token_file=home / "token", state_dir=home / "state",
                           golden_file=home / "golden.json")
    up = CountedUplink(cfg, node_id, Spool(home / "spool"), {}, source=f"127.0.1.{i + 1}",
                       tally=tally)
    tally.legit("node: enroll", up.enroll, until)
    if not up.enrolled:
        return
    node = RealNode(node_id, up)
    with tally.lock:
        nodes.append(node)
    tally.legit("node: attest", up.attest, until)
    n = 0
    while not stop.is_set():
        events = [agent_event("hostile-mix", round=n, k=k) for k in range(25)]
        up.spool.append(events, sync=False)
        node.sent.update(str(e.id) for e in events)
        tally.legit("node: forward events", up.forward, until)
        if n % 3 == 2:
            tally.legit("node: run orders", up.run_orders, until)
        n += 1
        stop.wait(0.4)
    tally.legit("node: forward events", up.forward, until)  # what is left
    tally.legit("node: run orders", up.run_orders, until)


def _operator_loop(srv: Server, tally: Tally, root: Path, stop: threading.Event,
                   nodes: list[RealNode], threads: list[threading.Thread], until: float
                   ) -> None:
    """A new node every 1.5 s (up to MAX_NODES), and as often an order for one of them
    (attest, rotate: the agent's uplink runs both itself)."""
    with _operator(srv) as op:
        i = 0
        while not stop.is_set():
            if i < MAX_NODES:
                t = threading.Thread(target=_guard, args=(tally, _real_node, srv, tally, i,
                                                          root, stop, nodes, until),
                                     name=f"real-{i}")
                t.start()
                threads.append(t)
                i += 1
            with tally.lock:
                live = [n.node_id for n in nodes]
            if live:
                target = live[i % len(live)]
                kind = "rotate" if i % 2 else "attest"
                args = {"what": "certificate"} if kind == "rotate" else {"reason": "mix"}

                def order(target: str = target, kind: str = kind, args: dict = args) -> None:
                    r = op.post(routes.ORDERS, json={"node_id": target, "kind": kind,
                                                     "args": args})
                    tally.answer(r)
                    r.raise_for_status()

                tally.legit("operator: order", order, until)
            stop.wait(1.5)


# -- hostile clients -----------------------------------------------------------------------
def _oversized(srv: Server, tally: Tally, stop: threading.Event) -> None:
    """300 MiB declared and sent until the controller answers, no client certificate."""
    n = 0
    while not stop.is_set():
        route = routes.EVENTS if n % 2 else routes.ENROLL
        head = (f"POST {route} HTTP/1.1\r\nHost: {srv.host}\r\nContent-Type: "
                f"application/json\r\nContent-Length: {300 * MiB}\r\n\r\n").encode()
        try:
            with raw_tls(srv, source="127.0.0.2") as sock:
                upload(sock, head, b"[" * 65536, 300 * MiB)
                tally.hit(f"oversized body, no cert, {route}", read_answer(sock)[0])
        except (OSError, IndexError, ValueError) as e:
            tally.hit(f"oversized body, no cert, {route}", type(e).__name__)
        n += 1
        stop.wait(0.2)


def _slowloris(srv: Server, tally: Tally, stop: threading.Event) -> None:
    """Keep up to 80 half requests open from one source (its cap is 64)."""
    open_: list[ssl.SSLSocket] = []
    try:
        while not stop.is_set():
            for sock in [s for s in open_ if _readable(s) and closed(s)]:
                tally.hit("slowloris", "closed by the server")
                open_.remove(sock)
                sock.close()
            while len(open_) < 80 and not stop.is_set():
                try:
                    sock = raw_tls(srv, source="127.0.0.3")
                    sock.sendall(b"POST /v1/ev" if len(open_) % 2 else
                                 f"POST {routes.ENROLL} HTTP/1.1\r\nHost: x\r\n"
                                 "Content-Length: 100\r\n\r\n{".encode())
                except OSError:
                    tally.hit("slowloris", "refused at connect")
                    break
                tally.hit("slowloris", "opened")
                open_.append(sock)
            stop.wait(0.5)
    finally:
        tally.hit("slowloris", f"still open at the end: {len(open_)}")
        for sock in open_:
            sock.close()


def _readable(sock: ssl.SSLSocket) -> bool:
    return bool(select.select([sock], [], [], 0)[0])


def _bogus_tokens(srv: Server, tally: Tally, stop: threading.Event) -> None:
    csr = node_csr(new_key(), "guess")
    ident = public_key_text(new_node(srv, "guess-key").identity.public_key())  # type: ignore[attr-defined]
    with httpx.Client(base_url=srv.url, transport=_transport(srv.ca, "127.0.0.2"),
                      timeout=30) as c:
        while not stop.is_set():
            r = c.post(routes.ENROLL, json={"node_id": "guess", "token": secrets.token_hex(16),
                                            "csr_pem": csr, "identity_key": ident})
            tally.hit("bogus token", r.status_code)
            stop.wait(0.05)


MALFORMED = [b"{", b"[1, 2", b'{"node_id": ', b"\xff\xfe\x00", b"null", b'"x"',
             b'{"node_id": "evil", "events": [{"ts_ns": 1e999}]}', b"[" * 5000,
             b'{"a": ' * 2000, b'{"node_id": "evil", "events": "' + b"A" * 100_000 + b'"}']


def _malformed(srv: Server, evil: Node, tally: Tally, stop: threading.Event) -> None:
    paths = [routes.EVENTS, routes.HEARTBEAT, routes.ATTEST, routes.CERTIFICATE,
             routes.order_ack(uuid.uuid4())]
    with _node_client(srv, evil, "127.0.0.4") as c:
        n = 0
        while not stop.is_set():
            body = MALFORMED[n % len(MALFORMED)]
            r = c.post(paths[n % len(paths)], content=body,
                       headers={"content-type": "application/json"})
            tally.hit("malformed JSON, node cert", r.status_code)
            n += 1
            stop.wait(0.02)


def _batch(node_id: str, n: int, value: int = 0, **data: Any) -> dict:
    events = [Event(ts_ns=time.time_ns(), kind=data.pop("kind", "exec"),
                    data={"filename": "x" * value, **data}) for _ in range(n)]
    return EventBatch.model_construct(node_id=node_id, events=events).model_dump(mode="json")


def _huge_batches(srv: Server, evil: Node, tally: Tally, stop: threading.Event,
                  source: str) -> None:
    """Floods of events that match a quarantine rule (two of these clients start with one
    at the same moment), full batches of near-maximal events (stored), over-long batches
    and over-size bodies."""
    with _node_client(srv, evil, source) as c:
        n = 0
        while not stop.is_set():
            what = n % 4
            if what == 0:
                body, kind = _batch(evil.node_id, MAX_BATCH, kind="policy", rule="r",
                                    action="quarantine", result="ok"), \
                    "1,000 quarantine-rule events"
            elif what == 1:  # 1,000 events of ~3.5 KB: under the 4 MiB limit, stored
                body, kind = _batch(evil.node_id, MAX_BATCH, 3500), "full batch, 3.5 KB values"
            elif what == 2:
                body, kind = _batch(evil.node_id, MAX_BATCH + 1), "batch over 1,000 events"
            else:
                body, kind = _batch(evil.node_id, MAX_BATCH, 4096, pad="y" * 1200), \
                    "batch over 4 MiB"
            try:
                r = c.post(routes.EVENTS, json=body)
                tally.hit(f"huge batch: {kind}", r.status_code)
            except httpx.TransportError as e:  # cut off at the limit while sending
                tally.hit(f"huge batch: {kind}", type(e).__name__)
            n += 1
            stop.wait(0.3)


@dataclass
class Captured:
    """Requests the evil node made once, legitimately, to replay them."""

    enroll: dict
    report: dict
    ack: tuple[str, dict]
    batch: dict


def _capture(srv: Server, evil: Node, op: httpx.Client, token_body: dict) -> Captured:
    with _node_client(srv, evil, "127.0.0.6") as c:
        nonce = c.get(routes.ATTEST_CHALLENGE).raise_for_status().json()["nonce"]
        report = signed_report(evil.identity, evil.node_id, nonce,  # type: ignore[attr-defined]
                               collect(Path("/nonexistent/golden.json"), sshd=False)
                               ).model_dump(mode="json")
        assert c.post(routes.ATTEST, json=report).status_code == 200
        made = op.post(routes.ORDERS, json={"node_id": evil.node_id, "kind": "attest",
                                            "args": {"reason": "replay"}})
        assert made.status_code == 201, made.text
        executor = OrderExecutor(evil.node_id, load_public_key(evil.order_key),  # type: ignore[attr-defined]
                                 evil.identity,  # type: ignore[attr-defined]
                                 FileReplayGuard(srv.state / "evil-nonces.json"),
                                 {"attest": lambda _a: "measured"})
        ack = executor.execute(made.json()).model_dump(mode="json")
        order_id = made.json()["order"]["id"]
        assert c.post(routes.order_ack(order_id), json=ack).status_code == 200
        batch = _batch(evil.node_id, 50)
        assert c.post(routes.EVENTS, json=batch).status_code == 200
    return Captured(token_body, report, (order_id, ack), batch)


def _replays(srv: Server, evil: Node, cap: Captured, tally: Tally,
             stop: threading.Event) -> None:
    with _node_client(srv, evil, "127.0.0.6") as c:
        n = 0
        while not stop.is_set():
            what = n % 4
            if what == 0:
                r = c.post(routes.ENROLL, json=cap.enroll)
                kind = "replayed enrollment (spent token)"
            elif what == 1:
                r, kind = c.post(routes.ATTEST, json=cap.report), "replayed attestation"
            elif what == 2:
                r, kind = c.post(routes.order_ack(cap.ack[0]), json=cap.ack[1]), \
                    "replayed order ack"
            else:
                r, kind = c.post(routes.EVENTS, json=cap.batch), "replayed event batch"
                if r.status_code == 200:
                    assert r.json()["stored"] == 0, r.text
            tally.hit(kind, r.status_code)
            n += 1
            stop.wait(0.1)


def _guard(tally: Tally, fn: Callable[..., None], *args: Any) -> None:
    try:
        fn(*args)
    except BaseException as e:  # reported by the test, not lost in a thread
        with tally.lock:
            tally.errors.append(f"{fn.__name__}: {type(e).__name__}: {e}")


# -- the ledger's account ------------------------------------------------------------------
def _ledger(srv: Server) -> list[dict]:
    out = srv.ctl("ledger", "show")
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def _check_records(srv: Server, tally: Tally, nodes: list[RealNode]) -> dict[str, int]:
    """Every state change in the tables has its ledger record, and the reverse."""
    records = _ledger(srv)
    by_kind: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_kind[r["kind"]].append(r)
    with srv.engine().connect() as conn:
        node_rows = {r.node_id: r for r in conn.execute(sa.text("SELECT * FROM nodes"))}
        orders = list(conn.execute(sa.text("SELECT * FROM orders")))
        tokens = list(conn.execute(sa.text("SELECT * FROM bootstrap_tokens")))
        incidents = list(conn.execute(sa.text(
            "SELECT node_id, rule, count(*) AS n FROM incidents GROUP BY node_id, rule")))
        stored = defaultdict(set)
        for row in conn.execute(sa.text("SELECT node_id, event_id FROM events")):
            stored[row.node_id].add(row.event_id)

    # enrollments and certificates: the serial in use is the last one recorded
    serial: dict[str, str] = {}
    enrolled: Counter[str] = Counter()
    issued: Counter[str] = Counter()
    for r in by_kind["enrollment"]:
        event = r["body"].get("event")
        if event in ("enrolled", "certificate_rotated"):
            serial[r["subject"]] = r["body"]["cert_serial"]
        enrolled[r["subject"]] += event == "enrolled"
        issued[r["subject"]] += event == "token_issued"
    for node_id, row in node_rows.items():
        assert row.cert_serial == serial.get(node_id), f"{node_id}: serial not on the ledger"
    used: Counter[str] = Counter(t.node_id for t in tokens if t.used_at is not None)
    assert used == +enrolled, (used, enrolled)
    assert Counter(t.node_id for t in tokens) == +issued

    # trust states: replaying the ledger's state changes gives each node's state
    state: dict[str, str] = {}
    for r in by_kind["state_change"]:
        assert state.get(r["subject"], "provisioning") == r["body"]["from"], r
        state[r["subject"]] = r["body"]["to"]
    assert {n: row.state for n, row in node_rows.items()} == \
        {n: state.get(n, "provisioning") for n in node_rows}

    # orders and their acknowledgments
    ordered = {r["body"]["order_id"]: r for r in by_kind["order"]}
    assert {o.order_id for o in orders} == set(ordered)
    acked = {r["body"]["order_id"]: r["body"]["status"] for r in by_kind["ack"]
             if "status" in r["body"]}
    for o in orders:
        assert ordered[o.order_id]["body"]["kind"] == o.kind
        assert acked.get(o.order_id, "pending") == o.status, o

    # unknown-token refusals: counted into window records, every one of them
    refused_unknown = sum(r["body"]["count"] for r in by_kind["token_refused"]
                          if r["subject"] == "")
    assert refused_unknown == tally.hostile[("bogus token", "403")]
    known = sum(1 for r in by_kind["token_refused"] if r["subject"])
    replayed = tally.hostile[("replayed enrollment (spent token)", "403")]
    assert known == replayed, (known, replayed)

    # no flood raised more than one incident per node and rule in the window
    assert all(i.n == 1 for i in incidents), list(incidents)
    # every event a real node spooled is stored, once
    for node in nodes:
        assert stored[node.node_id] == node.sent, node.node_id
    return {"records": len(records), "orders": len(orders), "nodes": len(node_rows),
            "events stored": sum(len(v) for v in stored.values()), "incidents": len(incidents)}


# -- the test ------------------------------------------------------------------------------
def test_hostile_mix_leaves_real_nodes_served_and_every_change_recorded(live: Server,
                                                                        tmp_path: Path
                                                                        ) -> None:
    srv = live
    tally = Tally()
    evil = new_node(srv, "evil")
    token = srv.token("evil")
    enroll_body = {"node_id": "evil", "token": token, "csr_pem": evil.csr,  # type: ignore[attr-defined]
                   "identity_key": public_key_text(evil.identity.public_key())}  # type: ignore[attr-defined]
    assert enroll(srv, evil, token).status_code == 200
    with _operator(srv) as op:
        cap = _capture(srv, evil, op, enroll_body)

    stop = threading.Event()
    until = time.monotonic() + DURATION + 60  # legit retries end here
    nodes: list[RealNode] = []
    node_threads: list[threading.Thread] = []
    rss: list[int] = []
    hostile = [threading.Thread(target=_guard, args=(tally, fn, *args), name=fn.__name__)
               for fn, args in ((_oversized, (srv, tally, stop)),
                                (_slowloris, (srv, tally, stop)),
                                (_bogus_tokens, (srv, tally, stop)),
                                (_malformed, (srv, evil, tally, stop)),
                                (_huge_batches, (srv, evil, tally, stop, "127.0.0.5")),
                                (_huge_batches, (srv, evil, tally, stop, "127.0.0.7")),
                                (_replays, (srv, evil, cap, tally, stop)))]
    operator = threading.Thread(target=_guard, args=(
        tally, _operator_loop, srv, tally, tmp_path, stop, nodes, node_threads, until))
    started = time.monotonic()
    for t in [*hostile, operator]:
        t.start()
    while time.monotonic() - started < DURATION:
        assert srv.proc is not None and srv.proc.poll() is None, "the controller died"
        rss.append(_peak_kb(srv.proc.pid)[1])
        time.sleep(1)
    stop.set()
    for t in [*hostile, operator]:
        t.join(timeout=120)
    for t in node_threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in [*hostile, operator, *node_threads])

    assert srv.proc is not None and srv.proc.poll() is None, "the controller died"
    peak_kb, _now = _peak_kb(srv.proc.pid)
    with httpx.Client(base_url=srv.url, verify=srv.ca, timeout=10) as c:
        assert c.get("/healthz").status_code == 200
    srv.kill(signal.SIGTERM)  # a clean stop: the last seal and the noise window recorded

    total = sum(tally.ops.values())
    first = sum(tally.first_try.values())
    print(f"\nhostile mix, {DURATION:.0f} s: controller peak memory (VmHWM) "
          f"{peak_kb / 1024:.1f} MB, RSS samples max {max(rss) / 1024:.1f} MB")
    print(f"legitimate operations: {total}, succeeded {total - len(tally.failed)} "
          f"({100 * (total - len(tally.failed)) / max(total, 1):.1f} %), right first time "
          f"{first} ({100 * first / max(total, 1):.1f} %); real nodes enrolled: {len(nodes)}")
    print(f"  by operation: {dict(tally.ops)}; retried: {dict(tally.retries)}")
    print(f"  legitimate HTTP answers: {dict(sorted(tally.legit_status.items()))}")
    print("hostile requests by kind and outcome:")
    for (kind, outcome), n in sorted(tally.hostile.items()):
        print(f"  {kind}: {outcome} x{n}")

    assert not tally.errors, tally.errors
    assert not tally.failed, tally.failed
    assert len(nodes) == len(node_threads) == MAX_NODES  # every node that started enrolled
    assert peak_kb < PEAK_LIMIT_KB, f"peak memory {peak_kb} kB"
    answers = [(kind, outcome) for kind, outcome in tally.hostile if outcome.isdigit()]
    assert not [a for a in answers if int(a[1]) >= 500 and a[1] != "503"], answers
    assert not [s for s in tally.legit_status if s >= 500 and s != 503]
    log = (srv.state / "serve.log").read_text()
    assert "Traceback" not in log, log[-3000:]

    verify = srv.ctl("ledger", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "unanchored tail: 0 records" in verify.stdout, verify.stdout
    figures = _check_records(srv, tally, nodes)
    print(f"ledger: {verify.stdout.strip()}\n  {figures}")
