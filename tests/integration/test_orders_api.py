"""Signed orders end to end over mutual TLS: an operator queues an order, the node
fetches it, the agent's executor verifies it with the order key it got at enrollment,
runs it and sends a signed acknowledgment; the controller records both and moves trust
states for quarantine and release. Forged and misdirected acknowledgments are refused."""

from __future__ import annotations

import json
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from aegis_agent.orders import FileReplayGuard, OrderExecutor
from aegis_protocol.signing import load_public_key
from harness_controller import Node, Server, enroll, new_node, operator_client

pytestmark = pytest.mark.integration
EDGE = "10.0.0.1 -> 10.0.0.2 tcp/22"


def _executor(node: Node, tmp_path: Path, done: list) -> OrderExecutor:
    def handler(kind: str):
        return lambda args: done.append((kind, args)) or f"{kind} done"

    return OrderExecutor(node.node_id, load_public_key(node.order_key),  # type: ignore[attr-defined]
                         node.identity, FileReplayGuard(tmp_path / "nonces.json"),  # type: ignore[attr-defined]
                         {k: handler(k) for k in ("grant", "revoke", "quarantine", "release")})


def _poll_and_run(server: Server, node: Node, ex: OrderExecutor) -> list[dict]:
    answers = []
    with node.client(server) as c:
        for signed in c.get("/v1/orders").json():
            ack = ex.execute(signed)
            r = c.post(f"/v1/orders/{signed['order']['id']}/ack", json=ack.model_dump(mode="json"))
            answers.append(r.json())
    return answers


def test_orders_are_fetched_verified_executed_and_acknowledged(server: Server,
                                                                tmp_path: Path) -> None:
    node = new_node(server, "web1")
    assert enroll(server, node, server.token("web1")).status_code == 200
    done: list = []
    ex = _executor(node, tmp_path, done)
    with operator_client(server) as op:
        r = op.post("/v1/orders", json={"node_id": "web1", "kind": "grant",
                                        "args": {"edge": EDGE, "ttl": 60}})
        assert r.status_code == 201, r.text
        bad = op.post("/v1/orders", json={"node_id": "web1", "kind": "grant", "args": {}})
        assert bad.status_code == 400 and "needs the argument 'edge'" in bad.json()["detail"]
    assert _poll_and_run(server, node, ex) == [{"order_id": r.json()["order"]["id"],
                                                "status": "done"}]
    assert done == [("grant", {"edge": EDGE, "ttl": 60})]
    with node.client(server) as c:
        assert c.get("/v1/orders").json() == []  # nothing pending any more
    with operator_client(server) as op:
        op.post("/v1/orders", json={"node_id": "web1", "kind": "quarantine",
                                    "args": {"level": "hard"}})
    _poll_and_run(server, node, ex)
    assert json.loads(server.ctl("node", "show", "web1").stdout)["state"] == "quarantined"
    with operator_client(server) as op:
        op.post("/v1/orders", json={"node_id": "web1", "kind": "release", "args": {}})
    _poll_and_run(server, node, ex)
    assert json.loads(server.ctl("node", "show", "web1").stdout)["state"] == "trusted"
    statuses = [json.loads(line)["status"] for line in server.ctl("orders").stdout.splitlines()]
    assert statuses == ["done", "done", "done"]
    kinds = [json.loads(line)["kind"] for line in server.ctl("ledger", "show").stdout.splitlines()]
    assert kinds.count("order") == 3 and kinds.count("ack") == 3
    assert server.ctl("ledger", "verify").returncode == 0


def test_forged_and_misdirected_acks_are_refused(server: Server, tmp_path: Path) -> None:
    a, b = new_node(server, "a1"), new_node(server, "b1")
    for n in (a, b):
        assert enroll(server, n, server.token(n.node_id)).status_code == 200
    with operator_client(server) as op:
        order = op.post("/v1/orders", json={"node_id": "a1", "kind": "revoke",
                                            "args": {"edge": EDGE}}).json()
    oid = order["order"]["id"]
    ack = _executor(a, tmp_path, []).execute(order).model_dump(mode="json")
    forged = json.loads(json.dumps(ack))
    forged["ack"]["status"] = "failed"
    with a.client(server) as c:
        r = c.post(f"/v1/orders/{oid}/ack", json=forged)
        assert r.status_code == 403 and "acknowledgment refused" in r.json()["detail"]
    with b.client(server) as c:  # b cannot acknowledge a's order
        assert c.post(f"/v1/orders/{oid}/ack", json=ack).status_code == 403
        assert c.get("/v1/orders").json() == []  # and never sees it
    with a.client(server) as c:
        assert c.post(f"/v1/orders/{oid}/ack", json=ack).status_code == 200
        again = c.post(f"/v1/orders/{oid}/ack", json=ack)
        assert again.status_code == 409 and "already acknowledged" in again.json()["detail"]


def test_orders_need_an_operator_and_a_live_node(server: Server) -> None:
    node = new_node(server, "c1")
    assert enroll(server, node, server.token("c1")).status_code == 200
    with node.client(server) as c:
        r = c.post("/v1/orders", json={"node_id": "c1", "kind": "release", "args": {}})
        assert r.status_code == 401
    server.token("d1")  # provisioning, never enrolled
    with operator_client(server) as op:
        r = op.post("/v1/orders", json={"node_id": "d1", "kind": "release", "args": {}})
        assert r.status_code == 409 and "provisioning" in r.json()["detail"]
        assert op.post("/v1/orders", json={"node_id": "zz", "kind": "release"}).status_code == 404


def _long_poll(server: Server, node: Node, wait: float) -> tuple[float, list]:
    """``GET /v1/orders?wait=`` from a thread; returns (seconds it took, the orders)."""
    with node.client(server) as c:
        t0 = time.monotonic()
        r = c.get("/v1/orders", params={"wait": wait}, timeout=wait + 30)
        assert r.status_code == 200, r.text
        return time.monotonic() - t0, r.json()


def test_the_long_poll_answers_when_an_order_is_made(server: Server) -> None:
    """An agent's long poll for orders is answered as soon as an order for its node is
    made: by an operator through this server (the order's commit rings the node's bell) or
    by the CLI in another process (found by the poll's re-read); with none it is held for
    its wait and answered empty; an order for another node does not answer it."""
    node, other, quiet = new_node(server, "lp1"), new_node(server, "lp2"), new_node(server, "lp4")
    for n in (node, other, quiet):
        assert enroll(server, n, server.token(n.node_id)).status_code == 200
    with ThreadPoolExecutor(2) as pool:
        took, orders = _long_poll(server, node, 2)
        assert orders == [] and took >= 1.9  # held for its wait
        poll = pool.submit(_long_poll, server, node, 20)
        time.sleep(1)
        with operator_client(server) as op:
            r = op.post("/v1/orders", json={"node_id": "lp2", "kind": "attest", "args": {}})
            assert r.status_code == 201, r.text
            time.sleep(1)
            assert not poll.done()  # another node's order
            r = op.post("/v1/orders", json={"node_id": "lp1", "kind": "attest", "args": {}})
            assert r.status_code == 201, r.text
        took, orders = poll.result(timeout=30)
        assert [o["order"]["id"] for o in orders] == [r.json()["order"]["id"]]
        assert took < 15  # answered by the order, not by the end of its 20 s
        # pending orders: answered at once, whatever the wait
        took, orders = _long_poll(server, node, 20)
        assert len(orders) == 1 and took < 15
        # an order made by another process (the CLI writes the database itself)
        poll = pool.submit(_long_poll, server, quiet, 20)
        time.sleep(1)
        out = server.ctl("order", "create", "lp4", "attest")
        assert out.returncode == 0, out.stderr
        took, orders = poll.result(timeout=30)
        assert len(orders) == 1 and took < 15
    with node.client(server) as c:
        for bad in ("-1", "26", "soon"):
            r = c.get("/v1/orders", params={"wait": bad})
            assert r.status_code == 422 and "wait" in r.json()["detail"], r.text


def test_a_stopping_server_does_not_wait_for_long_polls(server: Server) -> None:
    """SIGTERM with a long poll held: the poll is answered (empty) and the server exits
    long before the poll's wait would have ended (uvicorn waits for every answer)."""
    node = new_node(server, "lp3")
    assert enroll(server, node, server.token("lp3")).status_code == 200
    with ThreadPoolExecutor(1) as pool:
        poll = pool.submit(_long_poll, server, node, 25)
        time.sleep(1)
        assert server.proc is not None
        t0 = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(timeout=30)
        stopped = time.monotonic() - t0
        server.proc = None
        took, orders = poll.result(timeout=30)
    assert orders == [] and took < 15 and stopped < 15, (took, stopped)
