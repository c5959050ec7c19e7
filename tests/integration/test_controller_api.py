"""The controller's API as agents meet it: a real `aegis-controller serve` process (uvicorn,
mutual TLS with the controller's own CA) on a free loopback port, real client
certificates from enrollment, SQLite and PostgreSQL behind it, kill -9 in the middle of
an event burst."""

from __future__ import annotations

import json
import signal
import threading
import time

import httpx
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aegis_controller.pki import new_key
from aegis_protocol.enrollment import renew_request
from aegis_protocol.events import Event, EventBatch
from aegis_protocol.files import key_pem
from harness_controller import Node, Server, enroll, make_csr, new_node, report_incidents_twice

pytestmark = pytest.mark.integration


def _ledger_kinds(server: Server) -> list[tuple[str, str]]:
    out = server.ctl("ledger", "show")
    return [(r["kind"], r["subject"]) for r in map(json.loads, out.stdout.splitlines())]


def test_enrollment_and_the_identity_it_gives(server: Server) -> None:
    node = new_node(server, "web1")
    r = enroll(server, node, server.token("web1"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["node_id"] == "web1" and body["not_after"] > time.time() + 3600
    with node.client(server) as c:
        me = c.get("/v1/nodes/self")
    assert me.status_code == 200 and me.json()["state"] == "enrolled"
    with httpx.Client(base_url=server.url, verify=server.ca) as anonymous:
        assert anonymous.get("/v1/nodes/self").status_code == 401
    assert ("enrollment", "web1") in _ledger_kinds(server)
    assert server.ctl("ledger", "verify").returncode == 0


def _renewal(node: object, key: object, cn: str, identity: object = None) -> dict:
    """A renewal request for ``key`` (CN ``cn``), signed by the node's identity key unless
    another is given."""
    signer = identity or node.identity  # type: ignore[attr-defined]
    return renew_request(signer, node.node_id, make_csr(key, cn).decode()).model_dump()  # type: ignore[attr-defined]


def test_certificate_rotation_replaces_the_old_certificate(server: Server) -> None:
    node = new_node(server, "rot1")
    assert enroll(server, node, server.token("rot1")).status_code == 200
    old_cert = node.cert_file.read_bytes()
    old_key = node.key_file.read_bytes()
    with node.client(server) as c:
        wrong = c.post("/v1/certificate", json=_renewal(node, new_key(), "other"))
        assert wrong.status_code == 400 and "CN must be the node id" in wrong.json()["detail"]
        garbage = c.post("/v1/certificate", json=renew_request(
            node.identity, "rot1", "-" * 80).model_dump())  # type: ignore[attr-defined]
        assert garbage.status_code == 400 and "csr_pem" in garbage.json()["detail"]
        # a stolen TLS key alone cannot rotate: unsigned, or signed by another key
        unsigned = c.post("/v1/certificate",
                          json={"csr_pem": make_csr(new_key(), "rot1").decode()})
        assert unsigned.status_code == 422 and "signature" in unsigned.json()["detail"]
        forged = c.post("/v1/certificate", json=_renewal(node, new_key(), "rot1",
                                                         Ed25519PrivateKey.generate()))
        assert forged.status_code == 403 and "identity key" in forged.json()["detail"]
        key = new_key()
        r = c.post("/v1/certificate", json=_renewal(node, key, "rot1"))
    assert r.status_code == 200, r.text
    assert r.json()["not_after"] > time.time() + 3600
    # the reply may have been lost: the old certificate still works, and asking again
    # for the same key (a new CSR) gives the same certificate
    with node.client(server) as c:
        assert c.get("/v1/nodes/self").status_code == 200
        again = c.post("/v1/certificate", json=_renewal(node, key, "rot1"))
    assert again.status_code == 200 and again.json() == r.json()
    node.key_file.write_bytes(key_pem(key))
    node.cert_file.write_text(r.json()["certificate_pem"])
    assert node.cert_file.read_bytes() != old_cert
    with node.client(server) as c:  # the new certificate's first use
        assert c.get("/v1/nodes/self").status_code == 200
    (server.state / "old.pem").write_bytes(old_cert)
    (server.state / "old.key").write_bytes(old_key)
    old = Node("rot1", server.state / "old.key", server.state / "old.pem")
    with old.client(server) as c:  # from then on refused although not expired
        stale = c.get("/v1/nodes/self")
    assert stale.status_code == 401 and "replaced" in stale.json()["detail"]
    with httpx.Client(base_url=server.url, verify=server.ca) as anonymous:
        assert anonymous.post("/v1/certificate", json={"csr_pem": "x" * 80}).status_code == 401
    assert server.ctl("ledger", "verify").returncode == 0
    events = [json.loads(line)["body"].get("event")
              for line in server.ctl("ledger", "show").stdout.splitlines()]
    assert events.count("certificate_rotated") == 1  # the repeat issued nothing new
    assert events.count("certificate_renewal_refused") == 1


def test_bad_tokens_are_refused_and_recorded(server: Server) -> None:
    a, b = new_node(server, "a1"), new_node(server, "b1")
    token = server.token("a1")
    assert enroll(server, a, token).status_code == 200
    reused = enroll(server, new_node(server, "a1"), token)
    assert reused.status_code == 403 and "already used" in reused.json()["detail"]
    other = enroll(server, b, server.token("a1"))
    assert other.status_code == 403 and "another node" in other.json()["detail"]
    assert enroll(server, b, "x" * 43).json()["detail"].startswith("enrollment refused: unknown")
    expiring = server.token("b1", ttl=10)
    with server.engine().begin() as conn:
        conn.execute(sa.text("UPDATE bootstrap_tokens SET expires_at = 0 WHERE used_at IS NULL"))
    expired = enroll(server, b, expiring)
    assert expired.status_code == 403 and "expired" in expired.json()["detail"]
    refusals = [s for k, s in _ledger_kinds(server) if k == "token_refused"]
    # known tokens each; the unknown one is counted into its window's record (issue 12.3)
    assert refusals == ["a1", "b1", "b1"]


def test_malformed_requests_get_4xx_that_say_what_is_wrong(server: Server) -> None:
    with httpx.Client(base_url=server.url, verify=server.ca) as c:
        r = c.post("/v1/enroll", json={"node_id": "Bad Name!", "token": "t"})
        assert r.status_code == 422
        assert "node_id" in r.json()["detail"] and "csr_pem" in r.json()["detail"]
        r = c.post("/v1/enroll", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 422
    node = new_node(server, "c1")
    node.csr = make_csr(new_key(), "someone-else").decode()  # type: ignore[attr-defined]
    r = enroll(server, node, server.token("c1"))
    assert r.status_code == 400 and "CN must be the node id" in r.json()["detail"]


def _batches(node_id: str, total: int, size: int) -> list[dict]:
    events = [Event(ts_ns=i, kind="exec", data={"i": i}) for i in range(total)]
    return [EventBatch(node_id=node_id, events=events[i:i + size]).model_dump(mode="json")
            for i in range(0, total, size)]


def test_ten_thousand_events_stored_exactly_once_across_a_kill_9(server: Server) -> None:
    node = new_node(server, "n1")
    assert enroll(server, node, server.token("n1")).status_code == 200
    batches = _batches("n1", 10_000, 250)
    acked: set[int] = set()
    killed = threading.Event()

    def send_all() -> None:
        """The agent's forwarder: send each batch until it is acknowledged."""
        for i, batch in enumerate(batches):
            while i not in acked:
                try:
                    with node.client(server) as c:
                        r = c.post("/v1/events", json=batch)
                    if r.status_code == 200:
                        acked.add(i)
                except (httpx.HTTPError, OSError):
                    time.sleep(0.2)  # the controller is down: back off and resend

    sender = threading.Thread(target=send_all)
    sender.start()
    while len(acked) < 10:
        time.sleep(0.01)
    server.kill(signal.SIGKILL)  # mid-burst
    killed.set()
    time.sleep(0.5)
    server.start()
    sender.join(timeout=600)
    assert len(acked) == len(batches)
    with node.client(server) as c:  # a resent batch is counted as duplicates
        again = c.post("/v1/events", json=batches[0]).json()
    assert again == {"stored": 0, "duplicates": 250}
    with server.engine().connect() as conn:
        count = conn.execute(sa.text("SELECT count(*), count(DISTINCT event_id) FROM events")
                             ).one()
    assert tuple(count) == (10_000, 10_000)


def test_a_node_cannot_post_for_another(server: Server) -> None:
    a = new_node(server, "a2")
    assert enroll(server, a, server.token("a2")).status_code == 200
    with a.client(server) as c:
        r = c.post("/v1/events", json=_batches("b2", 3, 3)[0])
    assert r.status_code == 403 and "client certificate is 'a2'" in r.json()["detail"]
    with httpx.Client(base_url=server.url, verify=server.ca) as c:
        assert c.post("/v1/events", json=_batches("a2", 1, 1)[0]).status_code == 401


def test_events_become_incidents_once_and_a_quarantine_is_ordered(server: Server) -> None:
    node = report_incidents_twice(server, "i1")
    with node.client(server) as c:
        pending = c.get("/v1/orders").json()
    incidents = [json.loads(line) for line in server.ctl("incidents").stdout.splitlines()]
    assert [(i["rule"], i["severity"]) for i in incidents] == [
        ("denied-exec", "high"), ("agent-quarantined-node", "critical")]
    assert "/usr/bin/nc" in incidents[0]["summary"]
    assert [o["order"]["kind"] for o in pending] == ["quarantine"]
    assert pending[0]["order"]["args"]["level"] == "hard"
    assert incidents[1]["order_id"] == pending[0]["order"]["id"]
    # the events themselves, oldest first, filtered by kind
    events = [json.loads(line) for line in server.ctl(
        "events", "--node", "i1", "--kind", "policy").stdout.splitlines()]
    assert [(e["kind"], e["ts_ns"], e["data"]["action"]) for e in events] == [
        ("policy", 2, "quarantine")]
    both = [json.loads(line) for line in server.ctl("events", "--node", "i1").stdout.splitlines()]
    assert [(e["kind"], e["severity"], e["ts_ns"]) for e in both] == [
        ("exec_denied", "warning", 1), ("policy", "critical", 2)]
    assert both[0]["data"]["filename"] == "/usr/bin/nc"
    last = [json.loads(line) for line in server.ctl(
        "events", "--node", "i1", "--limit", "1").stdout.splitlines()]
    assert [e["kind"] for e in last] == ["policy"]


def test_oversized_event_fields_get_422_naming_the_field(server: Server) -> None:
    """Issue 12 item 12: a 1 MiB value (the request body limit refuses 5 MB batches before
    this) and a timestamp of 2^63 are refused with 422, not stored and not a 500."""
    node = new_node(server, "b1")
    assert enroll(server, node, server.token("b1")).status_code == 200
    event = {"id": "6f1c1b8e-7d3a-4a59-9a43-0c7f4f3d2a10", "ts_ns": 1, "kind": "agent",
             "data": {"what": "x" * (1024 * 1024)}}
    with node.client(server) as c:
        r = c.post("/v1/events", json={"node_id": "b1", "events": [event]})
        assert r.status_code == 422 and "what" in r.text, r.text[:500]
        r = c.post("/v1/events", json={"node_id": "b1", "events": [
            {**event, "ts_ns": 2**63, "data": {}}]})
        assert r.status_code == 422 and "ts_ns" in r.text, r.text[:500]
    with server.engine().connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM events")).scalar_one() == 0


def test_a_thousand_quarantine_events_raise_one_incident_and_one_order(server: Server) -> None:
    node = new_node(server, "f1")
    assert enroll(server, node, server.token("f1")).status_code == 200
    flood = EventBatch(node_id="f1", events=[
        Event(ts_ns=i, kind="policy", severity="critical",
              data={"rule": "scan", "action": "quarantine", "result": "ok"})
        for i in range(1000)]).model_dump(mode="json")
    before = len(_ledger_kinds(server))
    with node.client(server) as c:
        assert c.post("/v1/events", json=flood).json() == {"stored": 1000, "duplicates": 0}
        assert len(c.get("/v1/orders").json()) == 1
    incidents = server.ctl("incidents").stdout.splitlines()
    assert len(incidents) == 1
    assert len(_ledger_kinds(server)) - before <= 2  # the order (and maybe a checkpoint)


def test_a_clean_shutdown_seals_the_ledger_so_a_cut_tail_is_found(server: Server) -> None:
    """Issue 12 item 9: the server seals the ledger's head at shutdown (and on a timer), so
    deleting the newest records is found by `ledger verify`."""
    for i in range(3):
        server.token(f"seal{i}")  # each issue is a ledger record, none checkpointed
    server.kill(signal.SIGTERM)
    out = server.ctl("ledger", "verify", "--json")
    result = json.loads(out.stdout)
    assert out.returncode == 0 and result["unanchored"] == 0, out.stdout + out.stderr
    head = result["signed_head"]["seq"]
    assert head == result["head"]["seq"]
    with server.engine().begin() as conn:
        conn.execute(sa.text("DELETE FROM ledger_records WHERE seq >= :s"), {"s": head - 1})
    out = server.ctl("ledger", "verify")
    assert out.returncode == 1
    assert f"records {head - 1} to {head} are missing" in out.stdout, out.stdout
    server.start()  # the fixture stops what it started


def test_unknown_token_noise_is_recorded_when_the_server_stops(server: Server) -> None:
    """Issue 12 item 3 under the real server: the last window of unknown-token refusals is
    written by the app's shutdown, which runs only when uvicorn runs the lifespan (it did
    not: the count was lost at every stop)."""
    node = new_node(server, "noisy")
    for i in range(3):
        r = enroll(server, node, f"unknown-{i:02d}-" + "x" * 32)
        assert r.status_code == 403, r.text
    server.kill(signal.SIGTERM)
    out = server.ctl("ledger", "show")
    noise = [r["body"] for r in map(json.loads, out.stdout.splitlines())
             if r["kind"] == "token_refused" and "count" in r["body"]]
    assert sum(n["count"] for n in noise) == 3, out.stdout
    server.start()  # the fixture stops what it started
