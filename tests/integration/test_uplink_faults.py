"""The agent's controller link under faults, in-process against a real controller on
loopback: undecodable spool records, a failing forwarder, a lost order acknowledgment, a
lost certificate-rotation reply. The order handlers only record what they were asked."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from aegis_agent.config import ControllerConfig
from aegis_agent.spool import Spool
from aegis_agent.uplink import Uplink
from aegis_protocol import routes
from aegis_protocol.events import agent_event
from conftest import sub_prefix
from harness import FUTURE_EVENT, foreign_record
from harness_controller import Node, Server, controller_server, operator_client

pytestmark = pytest.mark.integration
NODE = "faulty1"


@dataclass
class Agent:
    uplink: Uplink
    done: list[tuple[str, dict]]
    spool_dir: Path


@pytest.fixture
def server() -> Iterator[Server]:
    with controller_server(sub_prefix(), None) as srv:
        yield srv


@pytest.fixture
def agent(server: Server, tmp_path: Path) -> Agent:
    """An enrolled uplink whose order handlers record their calls (no attestation)."""
    token = tmp_path / "token"
    token.write_text(server.token(NODE))
    cfg = ControllerConfig(url=server.url, ca_file=server.state / "ca" / "ca.pem",
                           token_file=token, state_dir=tmp_path / "state",
                           golden_file=tmp_path / "golden.json")
    done: list[tuple[str, dict]] = []

    def handler(kind: str):
        return lambda args: done.append((kind, args)) or f"{kind} done"

    spool_dir = tmp_path / "spool"
    up = Uplink(cfg, NODE, Spool(spool_dir),
                {k: handler(k) for k in ("grant", "revoke", "quarantine", "release")})
    up.next_attest = float("inf")
    up.enroll()
    return Agent(up, done, spool_dir)


def _order(server: Server, kind: str, **args: object) -> str:
    with operator_client(server) as op:
        r = op.post("/v1/orders", json={"node_id": NODE, "kind": kind, "args": args})
    assert r.status_code == 201, r.text
    return r.json()["order"]["id"]


def _orders(server: Server) -> dict[str, tuple[str, str]]:
    rows = [json.loads(line) for line in server.ctl("orders").stdout.splitlines()]
    return {o["order_id"]: (o["status"], o["detail"]) for o in rows}


def _stored(server: Server, what: str) -> list[dict]:
    with server.engine().connect() as conn:
        rows = conn.execute(sa.text("SELECT data FROM events WHERE node_id = :n"),
                            {"n": NODE}).scalars().all()
    data = [json.loads(r) if isinstance(r, str) else r for r in rows]
    return [d for d in data if d.get("what") == what]


def test_a_schema_invalid_spool_record_neither_stops_forwarding_nor_orders(
        server: Server, agent: Agent) -> None:
    oid = _order(server, "quarantine", level="hard")
    agent.uplink.spool.append([agent_event("before", i=0)])
    agent.uplink.spool.close()
    foreign_record(agent.spool_dir, agent.uplink.spool.next_seq, FUTURE_EVENT)
    agent.uplink.spool = Spool(agent.spool_dir)
    agent.uplink.spool.append([agent_event("after", i=2)])

    last = agent.uplink.tick(now=0)
    assert last["error"] is None, last
    assert agent.done == [("quarantine", {"level": "hard"})]
    assert _orders(server)[oid][0] == "done"
    assert len(_stored(server, "before")) == 1 and len(_stored(server, "after")) == 1
    (report,) = _stored(server, "spool_record_set_aside")
    assert report["seq"] == 1
    assert agent.uplink.spool.status()["records_set_aside"] == 1
    assert agent.uplink.spool.pending() == 0  # the cursor went past the bad record
    assert list((agent.spool_dir / "corrupt").glob("record-*.json"))


def test_a_forwarding_failure_does_not_keep_a_pending_order_from_running(
        server: Server, agent: Agent, monkeypatch: pytest.MonkeyPatch) -> None:
    oid = _order(server, "quarantine", level="hard")
    agent.uplink.spool.append([agent_event("waiting")])

    def refused(*_a: object, **_k: object) -> int:
        raise httpx.HTTPStatusError("events refused", request=httpx.Request("POST", "/"),
                                    response=httpx.Response(503))

    monkeypatch.setattr(agent.uplink, "forward", refused)
    last = agent.uplink.tick(now=0)
    assert agent.done == [("quarantine", {"level": "hard"})]
    assert _orders(server)[oid][0] == "done"
    assert "forwarded" in str(last["error"])  # reported, and backed off


def test_an_order_whose_ack_was_lost_is_recorded_as_done_not_refused(
        server: Server, agent: Agent, monkeypatch: pytest.MonkeyPatch) -> None:
    oid = _order(server, "quarantine", level="hard")
    lost: list[str] = []
    post = httpx.Client.post

    def lose_first_ack(self: httpx.Client, url: str, *a: object, **k: object) -> httpx.Response:
        if url.endswith("/ack") and not lost:
            lost.append(url)
            raise httpx.ReadError("connection reset before the acknowledgment arrived")
        return post(self, url, *a, **k)

    monkeypatch.setattr(httpx.Client, "post", lose_first_ack)
    assert "ReadError" in str(agent.uplink.tick(now=0)["error"])
    assert lost and _orders(server)[oid][0] == "pending"  # executed, but not known so
    assert agent.done == [("quarantine", {"level": "hard"})]

    last = agent.uplink.tick(now=1000)  # the order is fetched again
    assert last["error"] is None, last
    assert agent.done == [("quarantine", {"level": "hard"})]  # not run twice
    status, detail = _orders(server)[oid]
    assert status == "done" and "replayed" not in detail, detail
    shown = json.loads(server.ctl("node", "show", NODE).stdout)
    assert shown["state"] == "quarantined", shown


def test_a_lost_rotation_reply_does_not_lock_the_node_out(
        server: Server, agent: Agent, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    state = agent.uplink.state
    old_cert, old_key = (state / "node.pem").read_bytes(), (state / "tls.key").read_bytes()
    post = httpx.Client.post
    lost: list[str] = []

    def lose_rotation_reply(self: httpx.Client, url: str, *a: object,
                            **k: object) -> httpx.Response:
        r = post(self, url, *a, **k)
        if url == routes.CERTIFICATE and not lost:
            lost.append(r.json()["certificate_pem"])  # issued, but the node never sees it
            raise httpx.ReadError("connection reset before the reply arrived")
        return r

    monkeypatch.setattr(httpx.Client, "post", lose_rotation_reply)
    with pytest.raises(httpx.ReadError):
        agent.uplink.rotate_certificate()
    assert lost and (state / "node.pem").read_bytes() == old_cert

    # still in with the old certificate: a quarantine order reaches the node
    oid = _order(server, "quarantine", level="hard")
    assert agent.uplink.tick(now=0)["error"] is None
    assert _orders(server)[oid][0] == "done"

    # the retry asks for the same key and gets the certificate issued the first time
    agent.uplink.rotate_certificate()
    assert (state / "node.pem").read_text() == lost[0]
    assert agent.uplink.tick(now=1000)["error"] is None  # the new certificate's first use
    (tmp_path / "old.pem").write_bytes(old_cert)
    (tmp_path / "old.key").write_bytes(old_key)
    with Node(NODE, tmp_path / "old.key", tmp_path / "old.pem").client(server) as c:
        stale = c.get(routes.NODE_SELF)
    assert stale.status_code == 401 and "replaced" in stale.json()["detail"]
    events = [json.loads(line)["body"].get("event")
              for line in server.ctl("ledger", "show").stdout.splitlines()]
    assert events.count("certificate_rotated") == 1  # the retry issued nothing new


def test_the_back_off_counts_from_the_end_of_a_slow_failed_round(
        server: Server, tmp_path: Path) -> None:
    """A round that fails slowly (a peer that holds the connection, then drops it) must
    still wait the whole announced back-off before the next attempt: counting from the
    start of the round shortened the wait by the round's own length."""
    import socket
    import threading
    import time

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    held = 0.6

    def hold_then_drop() -> None:
        with listener:
            conn, _ = listener.accept()
            time.sleep(held)
            conn.close()

    threading.Thread(target=hold_then_drop, daemon=True).start()
    token = tmp_path / "token"
    token.write_text(server.token(NODE))
    cfg = ControllerConfig(url=f"https://127.0.0.1:{port}",
                           ca_file=server.state / "ca" / "ca.pem", token_file=token,
                           state_dir=tmp_path / "state", golden_file=tmp_path / "golden.json")
    up = Uplink(cfg, NODE, Spool(tmp_path / "spool"), {})
    started = time.monotonic()
    last = up.tick()
    ended = time.monotonic()
    assert last["error"] and up.backoff == 1.0, last
    assert ended - started >= held - 0.05  # the round really was slow
    assert up.next_try >= ended + up.backoff - 0.01, (up.next_try - ended, up.backoff)
