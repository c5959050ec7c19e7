"""Just-in-time access through the real data path: the real agent daemon (real XDP filter
on namespace b's veth) enrolled and trusted at a real controller in namespace a, which
trusts the real OpenBao's identity tokens (OpenBao listens on the host's loopback; a relay
opened inside namespace a at the same address and port lets the controller fetch the
issuer's keys, so the issuer URL is the one in the tokens). The user is in namespace a:
without a request a TCP connection to the node's service is dropped; the user's request
is granted, the agent runs the signed grant order and the connection succeeds; a revoke
cuts it again."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from harness_access import PORT, Fleet, access_fleet

from aegis_protocol import routes
from conftest import sub_prefix
from harness import OpenBao, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fleet(openbao: OpenBao) -> Iterator[Fleet]:
    with access_fleet(openbao, sub_prefix()) as f:
        yield f


def test_granted_user_connects_through_the_filter_and_revoke_cuts_it(fleet: Fleet) -> None:
    lab = fleet.daemon.lab
    assert not lab.reachable(PORT)  # no request: dropped by the filter
    r = fleet.as_user("eve", "POST", routes.ACCESS,
                      {"service": "db", "ttl": "10m", "reason": "curious"})
    assert r.status_code == 403 and "no rule of the access policy" in r.json()["detail"]
    assert not lab.reachable(PORT)
    r = fleet.as_user("dana", "POST", routes.ACCESS,
                      {"service": "db", "ttl": "10m", "reason": "INC-42"})
    assert r.status_code == 201, r.text
    granted = r.json()
    (edge,) = granted["edges"]
    assert edge["edge"] == f"{lab.pair.a_addr} -> {lab.pair.b_addr} tcp/{PORT}"
    assert wait_until(lambda: fleet.order_status(edge["grant_order"]) == "done", 30)
    assert wait_until(lambda: lab.reachable(PORT), 10)
    # the agent reports the edge's first packet; the controller records it on the ledger
    assert wait_until(lambda: fleet.as_user("dana", "GET", routes.access_one(
        granted["request_id"])).json()["edges"][0]["first_packet_ns"], 30)
    # and its heartbeats carry the edge's last packet (the console shows it)
    assert wait_until(lambda: fleet.as_user("dana", "GET", routes.access_one(
        granted["request_id"])).json()["edges"][0]["last_packet_ns"], 30)
    r = fleet.as_user("dana", "POST", routes.access_one(granted["request_id"], "revoke"),
                      {"reason": "done"})
    assert r.status_code == 200 and r.json()["status"] == "revoked", r.text
    revoke = r.json()["edges"][0]["revoke_order"]
    assert wait_until(lambda: fleet.order_status(revoke) == "done", 30)
    assert wait_until(lambda: not lab.reachable(PORT), 10)
    ledger = fleet.server.ctl("ledger", "show")
    steps = [json.loads(line)["body"] for line in ledger.stdout.splitlines()
             if json.loads(line)["subject"] == f"access:{granted['request_id']}"]
    assert [s["event"] for s in steps] == ["request", "grant", "first_packet", "revoke"]
    assert steps[2]["user"]["name"] == f"{fleet.idp.tag}-dana"
    assert fleet.server.ctl("ledger", "verify").returncode == 0


def test_trickle_keeps_the_grant_and_silence_revokes_it_after_idle(fleet: Fleet) -> None:
    """One packet every 5 s for longer than the 60 s idle timeout keeps the edge; then,
    with no traffic (nothing probes the edge meanwhile: the test watches the controller),
    the agent drops it, the controller records the idle revoke, and a new connection
    fails."""
    lab = fleet.daemon.lab
    r = fleet.as_user("dana", "POST", routes.ACCESS,
                      {"service": "db", "ttl": "30m", "reason": "INC-43"})
    assert r.status_code == 201, r.text
    rid = r.json()["request_id"]
    assert wait_until(lambda: lab.reachable(PORT), 30)
    conn = lab.connect(PORT, timeout=5)
    assert conn is not None
    with conn:
        for _ in range(16):  # 16 x 5 s = 80 s > 60 s idle
            conn.sendall(b"tick")
            assert conn.recv(4) == b"tick"
            time.sleep(5)
    state = fleet.as_user("dana", "GET", routes.access_one(rid)).json()
    assert state["status"] == "granted" and state["edges"][0]["status"] == "active", state
    assert lab.reachable(PORT)  # still open: a new connection passes
    assert wait_until(lambda: fleet.as_user("dana", "GET", routes.access_one(rid)).json()
                      ["status"] == "revoked", 120, 2)
    state = fleet.as_user("dana", "GET", routes.access_one(rid)).json()
    assert state["end_reason"].startswith("idle: no traffic for 60 s"), state
    assert state["edges"][0]["status"] == "idle"
    assert not lab.reachable(PORT)
    ledger = fleet.server.ctl("ledger", "show")
    events = [json.loads(line)["body"] for line in ledger.stdout.splitlines()
              if json.loads(line)["subject"] == f"access:{rid}"]
    assert [e["event"] for e in events] == ["request", "grant", "first_packet", "idle_revoke"]
    assert events[-1]["user"]["name"] == f"{fleet.idp.tag}-dana"
    assert fleet.server.ctl("ledger", "verify").returncode == 0
