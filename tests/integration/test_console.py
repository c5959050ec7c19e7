"""The operator console on a real `aegis-controller serve` with a populated database:
every page answers HTML and, for ``Accept: application/json``, the same data as JSON; a
node's certificate gets a 403 page, no certificate a 401 page; a read-only operator sees
no buttons and its posts are refused; a forged post (no CSRF token) is a 403 page;
unknown node, bad filters and oversized query strings are 4xx pages naming the problem,
never a traceback."""

from __future__ import annotations

import html
import json

import httpx
import pytest
from harness_console import SUSPECT_REASON, domain, populate

from aegis_controller.recovery.states import JobState
from aegis_protocol import routes
from aegis_protocol.events import EventBatch, agent_event
from harness_controller import Server, operator_client, report_incidents_twice

pytestmark = pytest.mark.integration
JSON = {"accept": "application/json"}
PAGES = ("fleet", "nodes/web2", "incidents", "recovery", "access", "policies", "ledger")
INVENTORIES = [
    {"os": "Debian 12", "kernel": "6.1.0-1", "packages": {"curl": "7.88", "vim": "9.0"},
     "services": {"ssh.service": "active/running"},
     "listening": [{"proto": "tcp", "address": "192.0.2.5", "port": 22}]},
    {"os": "Debian 12", "kernel": "6.1.0-1", "packages": {"curl": "7.89", "nmap": "7.93"},
     "services": {"ssh.service": "active/running", "evil.service": "active/running"},
     "listening": [{"proto": "tcp", "address": "192.0.2.5", "port": 22},
                   {"proto": "tcp", "address": "192.0.2.5", "port": 4444}]}]
LABEL_POLICY = """
policies:
  - name: web-db
    from: {role: web}
    to: {role: db}
    ports: [tcp/5432]
    mode: observe
"""


def _csrf(op: httpx.Client, page: str) -> str:
    html = op.get(f"/console/{page}").text
    return html.split('name="csrf" value="', 1)[1].split('"', 1)[0]


def test_console_pages_rights_and_bad_input(server: Server) -> None:
    ids = populate(domain(server))
    node = report_incidents_twice(server, "web4")
    # web1's last attestation as its agent reports it (kernel, agent, attach modes)
    domain(server).nodes.update("web1", measurement=json.dumps({
        "kernel_release": "6.1.0-test", "boot_id": "b", "agent_version": "0.1.0",
        "bpf": [{"component": "segment", "mode": "xdp/native tcx"},
                {"component": "exec", "mode": "lsm"}]}))
    # a label policy in observe mode, and the counters web4's agent reported for it
    domain(server).segment.set_policy(LABEL_POLICY, "test")
    counters = agent_event("label_policy_counters", policy="web-db", mode="observe", edges=2,
                           allowed_packets=7, allowed_bytes=700, dropped_packets=0,
                           dropped_bytes=0, observed_packets=3, observed_bytes=180)
    with node.client(server) as c:
        r = c.post(routes.EVENTS, json=EventBatch(node_id="web4", events=[counters])
                   .model_dump(mode="json"))
        assert r.status_code == 200, r.text
        # two inventories from web4's heartbeats: the node page shows what changed
        for inventory in INVENTORIES:
            r = c.post(routes.HEARTBEAT, json={"node_id": "web4", "boot_id": "b",
                                               "inventory": inventory})
            assert r.status_code == 200, r.text
    out = server.ctl("operator-cert", "carol", "--approve", "--group", "sec",
                     "--out", str(server.state / "ops"))
    assert out.returncode == 0, out.stderr
    with operator_client(server, "rita") as ro:  # read-only (no --approve)
        for page in PAGES:
            r = ro.get(f"/console/{page}")
            assert r.status_code == 200, (page, r.text)
            assert r.headers["content-type"].startswith("text/html")
            # no scripts, no framing: a button cannot be clicked through another page
            assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
            # the console's own script only (live updates): no inline script, no eval
            assert "script-src 'self';" in r.headers["content-security-policy"]
            assert "unsafe-eval" not in r.headers["content-security-policy"]
            twin = ro.get(f"/console/{page}", headers=JSON)
            assert twin.status_code == 200 and twin.headers["content-type"] == \
                "application/json"
        fleet = ro.get("/console/fleet", headers=JSON).json()
        states = {n["node_id"]: n["state"] for n in fleet["nodes"]}
        assert states == {"web1": "trusted", "web2": "suspect", "web3": "quarantined",
                          "web4": "enrolled"}  # its quarantine order is not acked yet
        assert fleet["counts"]["quarantined"] == 1 and fleet["counts"]["trusted"] == 1
        web1 = next(n for n in fleet["nodes"] if n["node_id"] == "web1")
        assert web1["attach_modes"] == {"segment": "xdp/native tcx", "exec": "lsm"}
        assert web1["kernel"] == "6.1.0-test"
        assert "segment: xdp/native tcx, exec: lsm" in ro.get("/console/fleet").text
        assert ro.get("/console/fleet?state=suspect", headers=JSON).json()["shown"] == 1
        desc = ro.get("/console/fleet?sort=node_id&order=desc", headers=JSON).json()
        assert [n["node_id"] for n in desc["nodes"]] == ["web4", "web3", "web2", "web1"]
        assert ro.get("/console/nodes/web2", headers=JSON).json()["node"]["reason"] == \
            SUSPECT_REASON
        assert SUSPECT_REASON in ro.get("/console/nodes/web2").text
        web4 = ro.get("/console/nodes/web4", headers=JSON).json()
        changes = web4["inventory_changes"]
        assert changes["packages"] == {"added": ["nmap 7.93"], "removed": ["vim 9.0"],
                                       "changed": ["curl 7.88 → 7.89"]}
        assert changes["services"]["added"] == ["evil.service"]
        assert changes["listening"] == {"added": ["tcp 192.0.2.5:4444"], "removed": []}
        assert changes["kernel"] is None
        assert "tcp 192.0.2.5:4444" in ro.get("/console/nodes/web4").text
        assert {i["rule"] for i in web4["incidents"]} == {"denied-exec",
                                                          "agent-quarantined-node"}
        timeline = ro.get("/console/incidents", headers=JSON).json()["incidents"]
        assert [s["stage"] for s in timeline[0]["stages"]] == [
            "detection", "containment", "forensics", "replacement", "trusted"]
        rules = ro.get("/console/policies", headers=JSON).json()["policy"]["rules"]
        assert [(r["name"], r["approvals"]) for r in rules] == [("developers-db", 1),
                                                                ("developers-db-ssh", 2)]
        assert "<svg" in ro.get("/console/policies").text
        (web_db,) = ro.get("/console/policies", headers=JSON).json()["segment"]["policies"]
        assert (web_db["name"], web_db["mode"], web_db["ports"]) == ("web-db", "observe",
                                                                     ["tcp/5432"])
        assert web_db["totals"]["observed_packets"] == 3
        assert [(n["node_id"], n["allowed_packets"]) for n in web_db["nodes"]] == [("web4", 7)]
        assert 'id="label-policies"' in ro.get("/console/policies").text
        # read-only: no buttons, and a post with a good token is still refused
        assert "Approve" not in ro.get("/console/access").text
        token = _csrf(ro, "ledger")
        r = ro.post(f"/console/access/{ids['request']}/approve", data={"csrf": token})
        assert r.status_code == 403 and "read-only" in r.text, r.text
        r = ro.post(f"/console/recovery/{ids['job']}/approve", data={"csrf": token})
        assert r.status_code == 403 and "--approve" in r.text
        # bad input: pages that say what was wrong, never a traceback
        for url, status, words in [
                ("/console/nodes/nope", 404, "no node 'nope'"),
                ("/console/fleet?state=bogus", 400, "state='bogus' is not one of"),
                ("/console/fleet?sort=evil", 400, "sort='evil'"),
                ("/console/fleet?colour=red", 400, "unknown filter 'colour'"),
                ("/console/fleet?q=%3Cscript%3E", 400, "give up to 63"),
                ("/console/fleet?q=" + "a" * 2000, 400, "at most 1024")]:
            r = ro.get(url)
            assert r.status_code == status, (url, r.status_code, r.text)
            assert words in html.unescape(r.text) and "Traceback" not in r.text
            assert r.headers["content-type"].startswith("text/html")
        assert ro.get("/console/nodes/nope", headers=JSON).json()["detail"].startswith(
            "no node 'nope'")
        # past what the HTTP parser reads at all (16 KiB head): refused before any route
        r = ro.get("/console/fleet?q=" + "a" * 20000)
        assert 400 <= r.status_code < 500 and "Traceback" not in r.text, r.status_code
        # ledger verify is open to any operator (it changes nothing), with the token
        r = ro.post("/console/ledger/verify", data={"csrf": token}, headers=JSON)
        assert r.status_code == 200 and r.json()["verify"]["ok"] is True, r.text

    ctx = server.ca
    ctx.load_cert_chain(server.state / "ops/operator-carol.pem",
                        server.state / "ops/operator-carol.key")
    with httpx.Client(base_url=server.url, verify=ctx, timeout=30) as op:
        assert "Approve" in op.get("/console/access").text
        # forged: no token, or another operator's page's token
        r = op.post(f"/console/access/{ids['request']}/approve", data={})
        assert r.status_code == 403 and "CSRF" in r.text
        r = op.post(f"/console/access/{ids['request']}/approve", data={"csrf": token})
        assert r.status_code == 403 and "CSRF" in r.text
        assert op.get("/console/access", headers=JSON).json()["pending"]
        mine = _csrf(op, "access")
        # a JSON client sends the token it read from a page's header back as a header
        header = op.get("/console/fleet", headers=JSON).headers["x-csrf-token"]
        assert header == mine
        r = op.post(f"/console/access/{ids['request']}/approve",
                    headers={**JSON, "x-csrf-token": header})
        assert r.status_code == 200 and r.json()["status"] == "granted", r.text
        # two-person rule: one operator's approval is not enough, nor the same one twice
        two = f"/console/access/{ids['two_person']}/approve"
        r = op.post(two, headers={**JSON, "x-csrf-token": header})
        assert r.json()["status"] == "pending" and len(r.json()["approvals"]) == 1, r.text
        r = op.post(two, data={"csrf": mine})
        assert r.status_code == 409 and "approved it already" in r.text, r.text
        r = op.post(f"/console/recovery/{ids['job']}/reject", data={"csrf": mine})
        assert r.status_code == 400 and "give a --reason" in r.text  # the store's words
        r = op.post(f"/console/recovery/{ids['job']}/reject",
                    data={"csrf": mine, "reason": "x" * 5000})
        assert r.status_code == 413
        r = op.post(f"/console/recovery/{ids['job']}/approve", data={"csrf": mine})
        assert r.status_code == 303  # back to the page
        jobs = op.get("/console/recovery", headers=JSON).json()["jobs"]
        assert [j["state"] for j in jobs if j["job_id"] == ids["job"]] == ["queued"]
        # the engine's next steps (as it records them): the timeline shows each stage
        ctl = domain(server)
        for step in (JobState.CONTAINING, JobState.COLLECTING, JobState.REPLACING):
            ctl.recovery.move(ids["job"], step, "test step", actor="controller:recovery")
        web3 = next(i for i in op.get("/console/incidents", headers=JSON).json()["incidents"]
                    if i["node_id"] == "web3")
        assert web3["job_id"] == ids["job"]
        after = {s["stage"]: s["after_s"] for s in web3["stages"]}
        assert after["forensics"] is not None and after["replacement"] is not None
        assert after["replacement"] >= after["forensics"] >= 0
        assert after["trusted"] is None and after["containment"] is None  # no order acked

    out = server.ctl("operator-cert", "sam", "--approve", "--group", "sec",
                     "--out", str(server.state / "ops"))
    assert out.returncode == 0, out.stderr
    ctx = server.ca
    ctx.load_cert_chain(server.state / "ops/operator-sam.pem",
                        server.state / "ops/operator-sam.key")
    with httpx.Client(base_url=server.url, verify=ctx, timeout=30) as sam:
        token = sam.get("/console/access").headers["x-csrf-token"]
        r = sam.post(f"/console/access/{ids['two_person']}/approve",
                     headers={**JSON, "x-csrf-token": token})
        assert r.status_code == 200 and r.json()["status"] == "granted", r.text

    with operator_client(server, "rita") as ro:  # the live-update script, for operators
        r = ro.get("/console/static/live.js")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript")
        assert "data-live" in r.text
        assert 'data-live="10"' in ro.get("/console/fleet").text
        assert "data-live" not in ro.get("/console/ledger").text  # a verify result stays
    with node.client(server) as c:  # a node's certificate: authenticated, not an operator
        assert c.get("/console/static/live.js").status_code == 403
        r = c.get("/console/fleet")
        assert r.status_code == 403 and "belongs to a node" in r.text
    with httpx.Client(base_url=server.url, verify=server.ca, timeout=30) as anon:
        assert anon.get("/console/fleet").status_code == 401
