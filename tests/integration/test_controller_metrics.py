"""The controller's ``/metrics`` on a real ``aegis-controller serve`` (SQLite, then
PostgreSQL), parsed with prometheus_client's own parser: each family moves when the test
does the matching thing (a node enrolls, events come in twice, an incident is raised, an
order is made, a recovery job ends, the ledger is verified); and lost events reported by a
node's heartbeat make it suspect above the threshold, never below it."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import httpx
import pytest
from harness_domain import quarantine
from harness_prometheus import Samples, parse, value

from aegis_controller.domain import Controller, open_controller
from aegis_controller.metrics import METRIC_NAMES
from aegis_controller.nodes import NodeState
from aegis_controller.recovery.states import JobState
from aegis_controller.settings import Settings
from aegis_controller.trust import Transition, transition
from harness_controller import (
    Node,
    Server,
    attest,
    operator_client,
    report_incidents_twice,
    trusted_node,
)

pytestmark = pytest.mark.integration

def scrape(op: httpx.Client) -> tuple[Samples, set[str]]:
    """Every sample of ``/metrics`` keyed on (name, labels), and the families' names."""
    r = op.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return parse(r.text)


def _domain(server: Server) -> Controller:
    """The controller's domain on the server's own database (as the CLI opens it)."""
    return open_controller(Settings.resolve(server.state, server.db,
                                            server.state / "ledger.anchor.json"))


def _restart(server: Server, *args: str) -> None:
    server.kill(signal.SIGTERM)
    server.start(*args)


def test_metrics_move_with_what_the_controller_does(server: Server) -> None:
    _restart(server, "--ledger-verify-interval", "1")
    with operator_client(server, "prometheus") as op:
        before, families = scrape(op)
        # every family the code declares is exposed (none forgotten in METRIC_NAMES)
        assert families == METRIC_NAMES
        assert value(before, "aegis_controller_database_up") == 1
        assert value(before, "aegis_controller_build_info", version="0.1.0",
                     python=next(dict(k[1])["python"] for k in before
                                 if k[0] == "aegis_controller_build_info")) == 1
        assert value(before, "aegis_nodes", state="enrolled") == 0
        assert value(before, "aegis_controller_process_resident_memory_bytes") > 0

        node = report_incidents_twice(server, "m1")
        with node.client(server) as c:
            # a node's certificate does not open the fleet's figures
            assert c.get("/metrics").status_code == 401
        with httpx.Client(base_url=server.url, verify=server.ca, timeout=30) as anon:
            assert anon.get("/metrics").status_code == 401

        ctl = _domain(server)
        ctl.nodes.move("m1", _trusted(), "test")
        quarantine(ctl, "m1")
        out = server.ctl("recovery", "start", "m1")
        assert out.returncode == 0, out.stderr
        job = json.loads(out.stdout)["job_id"]
        queued, _ = scrape(op)
        ctl.recovery.move(job, JobState.AWAITING_APPROVAL, "approval mode", actor="test")
        out = server.ctl("recovery", "reject", job, "--reason", "rebuilt by hand")
        assert out.returncode == 0, out.stderr

        after = _wait_for_verify(op)

    assert value(before, "aegis_events_ingested_total", result="stored") == 0
    assert value(after, "aegis_events_ingested_total", result="stored") == 2
    assert value(after, "aegis_events_ingested_total", result="duplicate") == 2
    assert value(after, "aegis_nodes", state="quarantined") == 1
    assert value(after, "aegis_nodes", state="enrolled") == 0
    assert value(after, "aegis_incidents_total", rule="denied-exec", severity="high") == 1
    assert value(after, "aegis_incidents_total", rule="agent-quarantined-node",
                 severity="critical") == 1
    assert value(after, "aegis_orders", kind="quarantine", status="pending") == 1
    assert value(queued, "aegis_recovery_jobs", state="queued") == 1
    assert value(after, "aegis_recovery_jobs", state="queued") == 0
    assert value(after, "aegis_recovery_jobs", state="failed") == 1
    assert value(queued, "aegis_recovery_job_duration_seconds_count", outcome="failed") == 0
    assert value(after, "aegis_recovery_job_duration_seconds_count", outcome="failed") == 1
    assert value(after, "aegis_recovery_job_duration_seconds_bucket", outcome="failed",
                 le="+Inf") == 1
    assert value(after, "aegis_ledger_records") > value(before, "aegis_ledger_records") > 0
    assert value(after, "aegis_ledger_verify_ok") == 1
    assert value(after, "aegis_ledger_verify_duration_seconds_count") >= 1
    assert value(after, "aegis_ledger_last_verify_timestamp_seconds") > 0
    # requests by route template and status class: two batches in; the node's refusal on
    # the route, the anonymous one before routing (no certificate: unmatched)
    assert value(after, "aegis_http_request_duration_seconds_count", route="/v1/events",
                 method="POST", status="2xx") == 2
    assert value(after, "aegis_http_request_duration_seconds_count", route="/metrics",
                 method="GET", status="4xx") == 1
    assert value(after, "aegis_http_request_duration_seconds_count", route="unmatched",
                 method="GET", status="4xx") == 1
    assert value(after, "aegis_http_request_duration_seconds_count", route="/v1/enroll",
                 method="POST", status="2xx") == 1


def _trusted() -> Transition:
    return transition(NodeState.ENROLLED, NodeState.TRUSTED, "attestation matches")


def _wait_for_verify(op: httpx.Client) -> Samples:
    """A scrape after the server's ledger verification ran at least once since the last
    change (its timer: 1 s)."""
    deadline = time.monotonic() + 60
    first = None
    while time.monotonic() < deadline:
        samples, _ = scrape(op)
        count = value(samples, "aegis_ledger_verify_duration_seconds_count")
        first = count if first is None else first
        if count >= first + 1:
            return samples
        time.sleep(0.5)
    raise AssertionError("the ledger was not verified within 60 s (timer: 1 s)")


def _beat(server: Server, node: Node, **lost: int) -> httpx.Response:
    with node.client(server) as c:
        return c.post("/v1/heartbeat", json={"node_id": node.node_id, "boot_id": "b",
                                             "events_lost": lost})


def test_lost_events_over_the_threshold_make_a_node_suspect(server: Server,
                                                            tmp_path: Path) -> None:
    _restart(server, "--lost-events-threshold", "10")
    root = tmp_path / "root"
    node = trusted_node(server, "l1", root)

    with operator_client(server) as op:
        # at the threshold: still trusted (the answer says so too)
        r = _beat(server, node, exec=6, segment=4)
        assert r.status_code == 200 and r.json()["trust"] == "trusted", r.text
        assert json.loads(server.ctl("node", "show", "l1").stdout)["state"] == "trusted"
        # one more than the threshold, in one heartbeat: suspect, with the reason
        r = _beat(server, node, exec=8, spool=3)
        assert r.status_code == 200 and r.json()["trust"] == "suspect", r.text
        show = json.loads(server.ctl("node", "show", "l1").stdout)
        assert show["state"] == "suspect"
        assert show["reason"] == ("events lost: 11 since the previous heartbeat (exec 8, "
                                  "spool 3; threshold 10)")
        # a matching attestation does not clear it: what went unrecorded is unknown
        assert attest(server, node, root)["state"] == "suspect"
        samples, _ = scrape(op)
    assert value(samples, "aegis_events_lost_reported_total", source="exec") == 14
    assert value(samples, "aegis_events_lost_reported_total", source="segment") == 4
    assert value(samples, "aegis_events_lost_reported_total", source="spool") == 3
    assert value(samples, "aegis_nodes", state="suspect") == 1
    kinds = [json.loads(line) for line in server.ctl("ledger", "show").stdout.splitlines()]
    assert any(k["kind"] == "state_change" and k["body"]["reason"].startswith("events lost")
               for k in kinds)
    # bad input: a negative count or a source that is no name is refused, naming the field
    r = _beat(server, node, exec=-1)
    assert r.status_code == 422 and "events_lost" in r.text
    with node.client(server) as c:
        r = c.post("/v1/heartbeat", json={"node_id": "l1", "boot_id": "b",
                                          "events_lost": {"Bad Source!": 1}})
    assert r.status_code == 422 and "events_lost" in r.text
