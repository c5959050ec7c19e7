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
from harness_access import CACHE_PORT, PORT, Fleet, access_fleet

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
    """Two grants of the same user side by side: ``db`` gets one packet every 5 s for
    longer than the 60 s idle timeout and stays open; ``cache`` carries one exchange and
    then nothing (nothing probes it meanwhile), so the agent drops it, the controller
    records the idle revoke, and a new connection to it fails while ``db`` still passes.
    (Side by side, the two halves take one idle timeout instead of two.)"""
    lab = fleet.daemon.lab
    rids = {}
    for service in ("db", "cache"):
        r = fleet.as_user("dana", "POST", routes.ACCESS,
                          {"service": service, "ttl": "30m", "reason": "INC-43"})
        assert r.status_code == 201, r.text
        rids[service] = r.json()["request_id"]

    def status(service: str) -> dict:
        return fleet.as_user("dana", "GET", routes.access_one(rids[service])).json()

    assert wait_until(lambda: lab.reachable(PORT) and lab.reachable(CACHE_PORT), 30)
    silent_since = time.monotonic()  # the cache edge's last packet: the probe above
    conn = lab.connect(PORT, timeout=5)
    assert conn is not None
    with conn:
        # one tick every 5 s until the cache grant is idle-revoked and the trickle has
        # lasted past the idle timeout (80 s at least; 120 s at most)
        started = time.monotonic()
        while time.monotonic() - started < 80 or status("cache")["status"] != "revoked":
            assert time.monotonic() - started < 120, status("cache")
            conn.sendall(b"tick")
            assert conn.recv(4) == b"tick"
            time.sleep(5)
        trickled = time.monotonic() - started
    db, cache = status("db"), status("cache")
    assert trickled > 60
    assert db["status"] == "granted" and db["edges"][0]["status"] == "active", db
    assert lab.reachable(PORT)  # still open: a new connection passes
    assert time.monotonic() - silent_since > 60  # the cache edge was silent that long
    assert cache["end_reason"].startswith("idle: no traffic for 60 s"), cache
    assert cache["edges"][0]["status"] == "idle"
    assert not lab.reachable(CACHE_PORT)
    ledger = fleet.server.ctl("ledger", "show")
    bodies = [json.loads(line) for line in ledger.stdout.splitlines()]

    def steps(service: str) -> list[dict]:
        return [b["body"] for b in bodies if b["subject"] == f"access:{rids[service]}"]

    assert [e["event"] for e in steps("cache")] == ["request", "grant", "first_packet",
                                                     "idle_revoke"]
    assert steps("cache")[-1]["user"]["name"] == f"{fleet.idp.tag}-dana"
    assert [e["event"] for e in steps("db")] == ["request", "grant", "first_packet"]
    assert fleet.server.ctl("ledger", "verify").returncode == 0
