"""Just-in-time access end to end: a real `aegis-controller serve` (SQLite and PostgreSQL)
trusting the real OpenBao's identity tokens; users and groups from userpass; a node that
enrolled and attested for real. An allowed user's request is granted as a signed grant
order (edge USER_IP -> NODE_IP tcp/5432, ttl = the granted time, idle 60 s) that the
agent's order executor verifies; another group is refused with the reason; a two-approver
rule is not satisfied by one approver nor by the requester; revoke sends a revoke order;
a node leaving trusted has its grants revoked; a grant's end is recorded; every bad input
is refused with the field named and changes nothing; the ledger verifies."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from harness_idp import Idp, make_idp, stand_in_token
from harness_prometheus import parse, value

from aegis_agent.measure import collect
from aegis_agent.orders import FileReplayGuard, OrderExecutor
from aegis_controller.access.store import PENDING_MAX
from aegis_controller.domain import open_controller
from aegis_controller.settings import Settings
from aegis_protocol import routes
from aegis_protocol.attestation import ExpectedProfile
from aegis_protocol.events import EventBatch, agent_event
from aegis_protocol.signing import load_public_key
from conftest import sub_prefix
from harness import OpenBao
from harness_controller import Node, Server, attest, enroll, new_node, node_tree, operator_client

pytestmark = pytest.mark.integration

NODE, NODE_IP = "db1", "10.77.0.5"
USERS = {"dana": ["dev"], "eve": ["sales"], "adam": ["admins", "security"],
         "sam": ["security"], "dora": ["dba"]}


def policy_text(idp: Idp, **extra: str) -> str:
    g = idp.group
    return f"""
roles:
  developer: [{g("dev")}]
  admin: [{g("admins")}]
  security: [{g("security")}]
  dba: [{g("dba")}]
services:
  db:
    nodes: {{role: db}}
    port: tcp/5432
  db-ssh:
    nodes: {{role: db, env: lab}}
    port: tcp/22
rules:
  - name: developers-db
    service: db
    roles: [developer]
    max_ttl: {extra.get("max_ttl", "1h")}
  - name: admin-ssh
    service: db-ssh
    roles: [admin]
    max_ttl: 30m
    approvers: [security, dba]
    approvals: 2
{extra.get("more", "")}"""


@pytest.fixture(scope="module")
def idp(openbao: OpenBao) -> Idp:
    return make_idp(openbao, sub_prefix(), USERS)


@dataclass
class Lab:
    server: Server
    idp: Idp
    node: Node
    root: Path
    tmp: Path

    def call(self, user: str | None, method: str, path: str, body: dict | None = None,
             token: str | None = None) -> httpx.Response:
        headers = {}
        if user is not None or token is not None:
            headers["Authorization"] = f"Bearer {token or self.idp.token(user or '')}"
        with httpx.Client(base_url=self.server.url, verify=self.server.ca, timeout=30) as c:
            return c.request(method, path, json=body, headers=headers)

    def request(self, user: str, service: str, ttl: str | int = "15m", **kw: object
                ) -> httpx.Response:
        return self.call(user, "POST", routes.ACCESS,
                         {"service": service, "ttl": ttl, "reason": "ticket 42", **kw})

    def cli(self, user: str, *args: str) -> tuple[int, str, str]:
        token_file = self.tmp / f"{user}.jwt"
        token_file.write_text(self.idp.token(user))
        out = self.server.ctl("access", *args, "--url", self.server.url, "--ca",
                              str(self.server.state / "ca" / "ca.pem"),
                              "--token-file", str(token_file))
        return out.returncode, out.stdout, out.stderr

    def ledger(self) -> list[dict]:
        out = self.server.ctl("ledger", "show")
        assert out.returncode == 0, out.stderr
        return [json.loads(line) for line in out.stdout.splitlines()]

    def access_events(self) -> list[dict]:
        return [r["body"] | {"actor": r["actor"], "subject": r["subject"]}
                for r in self.ledger() if r["kind"] == "access_grant"]

    def orders(self) -> list[dict]:
        """The node's pending grant and revoke orders."""
        with self.node.client(self.server) as c:
            r = c.get(routes.ORDERS)
        assert r.status_code == 200, r.text
        return [o for o in r.json() if o["order"]["kind"] in ("grant", "revoke")]

    def attest(self) -> str:
        return attest(self.server, self.node, self.root)["state"]

    def set_profile(self, golden: dict[str, str]) -> None:
        with operator_client(self.server) as op:
            r = op.put(routes.node_profile(NODE),
                       json=ExpectedProfile(golden=golden).model_dump(mode="json"))
        assert r.status_code == 204, r.text

    def grants(self) -> dict[str, float]:
        """``aegis_grants`` per state and ``aegis_access_requests`` per status, as the
        controller's ``/metrics`` exposes them now."""
        with operator_client(self.server, "prometheus") as op:
            r = op.get("/metrics")
        assert r.status_code == 200, r.text
        samples, _ = parse(r.text)
        return {**{f"grants:{s}": value(samples, "aegis_grants", state=s)
                   for s in ("live", "expired", "idle_revoked", "revoked")},
                **{f"requests:{s}": value(samples, "aegis_access_requests", status=s)
                   for s in ("pending", "granted", "denied", "expired", "revoked")}}

    def run_orders(self, kinds: tuple[str, ...] = ("grant", "revoke", "attest")
                   ) -> list[tuple]:
        """The agent's order executor on the node's pending orders (real verification:
        the controller's order key from enrollment, node id, expiry, nonce); returns the
        grants and revokes it ran."""
        done: list[tuple] = []

        def handler(kind: str):
            return lambda args: done.append((kind, args)) or "ok"

        ex = OrderExecutor(NODE, load_public_key(self.node.order_key),  # type: ignore[attr-defined]
                           self.node.identity, FileReplayGuard(self.tmp / "nonces.json"),  # type: ignore[attr-defined]
                           {k: handler(k) for k in kinds})
        with self.node.client(self.server) as c:
            for signed in c.get(routes.ORDERS).json():
                ack = ex.execute(signed)
                assert ack.ack.status == "done", ack.ack.detail
                r = c.post(routes.order_ack(signed["order"]["id"]),
                           json=ack.model_dump(mode="json"))
                assert r.status_code == 200, r.text
        return [d for d in done if d[0] != "attest"]


def _lab(idp: Idp, db: str | None, tmp: Path) -> Iterator[Lab]:
    state = Path(tempfile.mkdtemp(prefix=f"{sub_prefix()}-access-ctl-"))
    srv = Server(state, db)
    try:
        assert srv.ctl("keys", "init").returncode == 0
        srv.start("--oidc-issuer", idp.issuer, "--oidc-audience", idp.audience,
                  "--oidc-leeway", "0")
        node = new_node(srv, NODE)
        assert enroll(srv, node, srv.token(NODE)).status_code == 200
        lab = Lab(srv, idp, node, node_tree(tmp / "root"), tmp)
        lab.set_profile(collect(root=lab.root, sshd=False).golden)
        assert lab.attest() == "trusted"
        out = srv.ctl("node", "labels", NODE, "role=db", "env=lab", "--address", NODE_IP)
        assert out.returncode == 0, out.stderr
        (tmp / "policy.yml").write_text(policy_text(idp))
        out = srv.ctl("access", "policy", "set", str(tmp / "policy.yml"))
        assert out.returncode == 0, out.stderr
        yield lab
    finally:
        if srv.proc is not None:
            srv.kill()
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def lab_db(request: pytest.FixtureRequest, idp: Idp, tmp_path: Path) -> Iterator[Lab]:
    db = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    yield from _lab(idp, db, tmp_path)


@pytest.fixture
def lab(idp: Idp, tmp_path: Path) -> Iterator[Lab]:
    yield from _lab(idp, None, tmp_path)


def test_allowed_user_is_granted_a_signed_edge_other_group_refused(lab_db: Lab) -> None:
    lab = lab_db
    # another group: refused with the reason, nothing queued
    r = lab.request("eve", "db")
    assert r.status_code == 403, r.text
    assert "no rule of the access policy lets your roles" in r.json()["detail"]
    assert lab.orders() == []
    # the allowed group, from the CLI on the user's side
    code, out, err = lab.cli("dana", "request", "db", "--ttl", "15m", "--reason", "ticket 7")
    assert code == 0, err
    granted = json.loads(out)
    assert granted["status"] == "granted" and granted["ttl"] == 900
    assert granted["user_name"] == f"{lab.idp.tag}-dana"
    edge = f"127.0.0.1 -> {NODE_IP} tcp/5432"
    assert [e["edge"] for e in granted["edges"]] == [edge]
    done = lab.run_orders()
    assert done == [("grant", {"edge": edge, "ttl": 900, "idle": 60})]
    # revoke (the requester, from the CLI): a signed revoke order for the same edge
    code, out, err = lab.cli("dana", "revoke", granted["request_id"], "--reason", "done")
    assert code == 0, err
    assert json.loads(out)["status"] == "revoked"
    assert lab.run_orders() == [("revoke", {"edge": edge})]
    # every step on the ledger with the user's identity
    events = [e for e in lab.access_events() if e["subject"] == f"access:{granted['request_id']}"]
    assert [e["event"] for e in events] == ["request", "grant", "revoke"]
    for e in events:
        assert e["user"]["name"] == f"{lab.idp.tag}-dana"
        assert e["user"]["groups"] == [lab.idp.group("dev")] and e["user"]["sub"]
    assert events[0]["reason"] == "ticket 7" and events[0]["source"] == "127.0.0.1"
    assert lab.server.ctl("ledger", "verify").returncode == 0


def test_two_approvers_not_one_and_never_the_requester(lab_db: Lab) -> None:
    lab = lab_db
    r = lab.request("adam", "db-ssh", "20m")
    assert r.status_code == 201, r.text
    req = r.json()
    assert req["status"] == "pending" and req["approvals_needed"] == 2
    rid = req["request_id"]
    assert lab.orders() == []
    # adam is in an approver group, but it is his own request
    r = lab.call("adam", "POST", routes.access_one(rid, "approve"), {"reason": "me"})
    assert r.status_code == 403 and "your own request" in r.json()["detail"]
    # dana is no approver
    r = lab.call("dana", "POST", routes.access_one(rid, "approve"), {})
    assert r.status_code == 403 and "only members of the approver roles" in r.json()["detail"]
    # one approver: still pending, nothing queued; the same one again: refused
    r = lab.call("sam", "POST", routes.access_one(rid, "approve"), {"reason": "ok"})
    assert r.status_code == 200 and r.json()["status"] == "pending", r.text
    r = lab.call("sam", "POST", routes.access_one(rid, "approve"), {})
    assert r.status_code == 409 and "2 different approvers" in r.json()["detail"]
    assert lab.orders() == []
    # a second, different approver (from the CLI): granted, the grant order queued
    code, out, err = lab.cli("dora", "approve", rid, "--reason", "change 9")
    assert code == 0, err
    assert json.loads(out)["status"] == "granted"
    assert lab.run_orders() == [("grant", {"edge": f"127.0.0.1 -> {NODE_IP} tcp/22",
                                           "ttl": 1200, "idle": 60})]
    # deny: a second request denied by an approver is never granted
    rid2 = lab.request("adam", "db-ssh", "5m").json()["request_id"]
    code, out, err = lab.cli("sam", "deny", rid2, "--reason", "not now")
    assert code == 0, err
    assert json.loads(out)["status"] == "denied"
    r = lab.call("dora", "POST", routes.access_one(rid2, "approve"), {})
    assert r.status_code == 409 and "is denied, not pending" in r.json()["detail"]
    assert lab.orders() == []
    # the approvers can see the requests; eve (no part in them) cannot
    assert {x["request_id"] for x in lab.call("sam", "GET", routes.ACCESS).json()} == \
        {rid, rid2}
    assert lab.call("eve", "GET", routes.ACCESS).json() == []
    assert lab.call("eve", "GET", routes.access_one(rid)).status_code == 404
    events = [(e["event"], e["user"]["name"].removeprefix(f"{lab.idp.tag}-"))
              for e in lab.access_events() if e["subject"] == f"access:{rid}"]
    assert events == [("request", "adam"), ("approval", "sam"), ("approval", "dora"),
                      ("grant", "adam")]
    # a request nobody decides on expires after an hour (the controller's sweep, run here
    # an hour ahead: the 20 min grant ends too)
    rid3 = lab.request("adam", "db-ssh", "5m").json()["request_id"]
    ctl = open_controller(Settings.resolve(lab.server.state, lab.server.db))
    assert set(ctl.access.expire_due(int(time.time()) + PENDING_MAX + 1)) == {rid, rid3}
    ctl.engine.dispose()
    listed = {r["request_id"]: r for r in map(json.loads, lab.server.ctl(
        "access", "requests").stdout.splitlines())}
    assert (listed[rid]["status"], listed[rid]["edges"][0]["status"]) == ("expired", "expired")
    assert listed[rid3]["status"] == "expired"
    assert listed[rid3]["end_reason"] == f"not approved within {PENDING_MAX} s"
    assert listed[rid2]["status"] == "denied"
    # the two approvals at the same moment: one grant, one grant order
    rid4 = lab.request("adam", "db-ssh", "5m").json()["request_id"]
    tokens = [lab.idp.token(u) for u in ("sam", "dora")]
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda t: lab.call(
            None, "POST", routes.access_one(rid4, "approve"), {}, token=t), tokens))
    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    assert sorted(a.json()["status"] for a in answers) == ["granted", "pending"]
    assert len(lab.run_orders()) == 1
    assert lab.server.ctl("ledger", "verify").returncode == 0


def test_node_leaving_trusted_revokes_its_grants_and_expiry_is_recorded(lab: Lab) -> None:
    short = lab.request("dana", "db", 2).json()
    long = lab.request("dana", "db", "30m").json()
    assert short["status"] == long["status"] == "granted"
    assert lab.grants() == {"grants:live": 2, "grants:expired": 0, "grants:idle_revoked": 0,
                            "grants:revoked": 0, "requests:pending": 0, "requests:granted": 2,
                            "requests:denied": 0, "requests:expired": 0,
                            "requests:revoked": 0}
    lab.run_orders()
    # the short grant's time ends: recorded by the controller (the agent drops the edge)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and lab.call(
            "dana", "GET", routes.access_one(short["request_id"])).json()["status"] != "expired":
        time.sleep(0.5)
    assert lab.call("dana", "GET", routes.access_one(short["request_id"])).json()["status"] \
        == "expired"
    # the node fails attestation: suspect; the long grant is revoked by a signed order
    lab.set_profile({"/etc/aegis.conf": "0" * 64})
    assert lab.attest() == "suspect"
    state = lab.call("dana", "GET", routes.access_one(long["request_id"])).json()
    assert state["status"] == "revoked" and "left trusted" in state["end_reason"]
    assert lab.run_orders() == [("revoke", {"edge": f"127.0.0.1 -> {NODE_IP} tcp/5432"})]
    # and nothing new is granted on a node that is not trusted
    r = lab.request("dana", "db")
    assert r.status_code == 409 and "no trusted node" in r.json()["detail"]
    events = {(e["subject"], e["event"]) for e in lab.access_events()}
    assert (f"access:{short['request_id']}", "expiry") in events
    assert (f"access:{long['request_id']}", "revoke") in events
    # the controller's metrics count each end by its kind
    assert lab.grants() == {"grants:live": 0, "grants:expired": 1, "grants:idle_revoked": 0,
                            "grants:revoked": 1, "requests:pending": 0, "requests:granted": 0,
                            "requests:denied": 0, "requests:expired": 1,
                            "requests:revoked": 1}
    assert lab.server.ctl("ledger", "verify").returncode == 0


def test_an_agents_idle_drop_ends_the_grant_on_the_ledger(lab: Lab) -> None:
    """The agent reports the edges it swept (agent event ``edges_expired``); an active
    granted edge among them, before its end, was idle: recorded, request revoked. The
    real agent's idle sweep is in test_access_datapath."""
    granted = lab.request("dana", "db", "30m").json()
    other = lab.request("dana", "db", "30m").json()  # the same edge: both named
    edge = granted["edges"][0]["edge"]
    # the agent saw the edge's first packet (reported twice: an agent that restarted
    # reports again): recorded once per grant, with the time the agent gave
    used = [agent_event("edge_used", edge=edge, seen_by_ns=1_700_000_000_000_000_000 + i)
            for i in (1, 2)]
    with lab.node.client(lab.server) as c:
        for ev in used:
            r = c.post(routes.EVENTS, json=EventBatch(node_id=NODE, events=[ev])
                       .model_dump(mode="json"))
            assert r.status_code == 200, r.text
    state = lab.call("dana", "GET", routes.access_one(granted["request_id"])).json()
    assert state["edges"][0]["first_packet_ns"] == 1_700_000_000_000_000_001
    firsts = [e for e in lab.access_events() if e["event"] == "first_packet"]
    assert sorted(e["subject"] for e in firsts) == sorted(
        f"access:{g['request_id']}" for g in (granted, other))
    assert firsts[0]["user"]["name"] == f"{lab.idp.tag}-dana" and firsts[0]["edge"] == edge
    batch = EventBatch(node_id=NODE, events=[
        agent_event("edges_expired", edges=f"10.1.1.1 -> {NODE_IP} tcp/80,{edge}")])
    with lab.node.client(lab.server) as c:
        r = c.post(routes.EVENTS, json=batch.model_dump(mode="json"))
    assert r.status_code == 200, r.text
    for rid in (granted["request_id"], other["request_id"]):
        state = lab.call("dana", "GET", routes.access_one(rid)).json()
        assert state["status"] == "revoked" and state["edges"][0]["status"] == "idle"
        assert state["end_reason"].startswith("idle: no traffic for 60 s")
    events = [e for e in lab.access_events() if e["event"] == "idle_revoke"]
    assert len(events) == 2 and events[0]["edge"] == edge
    grants = lab.grants()
    assert (grants["grants:idle_revoked"], grants["grants:live"]) == (2, 0), grants
    assert events[0]["user"]["name"] == f"{lab.idp.tag}-dana"
    assert lab.server.ctl("ledger", "verify").returncode == 0


def test_bad_input_is_refused_naming_the_field_and_changes_nothing(lab: Lab) -> None:
    idp = lab.idp
    before_ledger = len(lab.ledger())
    cases = [
        ("garbage", "Authorization: malformed token"),
        (stand_in_token({"iss": "https://idp.example.test", "aud": idp.audience}),
         "token iss: issuer 'https://idp.example.test'"),
        (idp.token("dana", idp.add_role(f"{idp.tag}-ra", "10m", f"{idp.tag}-elsewhere")),
         "token aud: audience"),
        (stand_in_token({"iss": idp.issuer, "aud": idp.audience}), "token kid"),
    ]
    for token, message in cases:
        r = lab.call(None, "POST", routes.ACCESS, {"service": "db", "ttl": "5m",
                                                   "reason": "x"}, token=token)
        assert r.status_code == 401 and message in r.json()["detail"], r.text
    r = lab.call(None, "POST", routes.ACCESS, {"service": "db", "ttl": "5m", "reason": "x"})
    assert r.status_code == 401 and "Authorization" in r.json()["detail"]
    expired = idp.token("dana", idp.add_role(f"{idp.tag}-rs", "1s", idp.audience))
    time.sleep(2.5)
    r = lab.call(None, "GET", routes.ACCESS, token=expired)
    assert r.status_code == 401 and "token exp: the token expired" in r.json()["detail"]
    # a TTL over the rule's maximum, a bad duration, an unknown service
    r = lab.request("dana", "db", "2h")
    assert r.status_code == 400 and r.json()["detail"].startswith("ttl: 7200 s is over")
    r = lab.request("dana", "db", "soon")
    assert r.status_code == 422 and "ttl" in r.json()["detail"]
    r = lab.request("dana", "nosuch")
    assert r.status_code == 403 and "service: no service 'nosuch'" in r.json()["detail"]
    code, _, err = lab.cli("dana", "request", "db", "--ttl", "3h", "--reason", "x")
    assert code == 2 and "refused (400): ttl: 10800 s is over the maximum" in err
    assert lab.call("dana", "GET", routes.ACCESS).json() == []
    # policies refused as a whole: the one in force stays
    shown = lab.server.ctl("access", "policy", "show").stdout
    bad = {
        "unknown label key": (policy_text(idp).replace("{role: db}", "{rle: db}", 1),
                              "services.db.nodes.rle: unknown label key"),
        "conflicting actions": (policy_text(idp, more=(
            "  - name: no-devs\n    service: db\n    roles: [developer]\n"
            "    action: deny\n")), "overlaps rule 'developers-db' (rules[0]) on service "
                                    "'db' for role(s) developer: conflicting actions"),
        "max_ttl": (policy_text(idp, max_ttl="3d"), "rules[0].max_ttl: 259200 s is over"),
    }
    for name, (text, message) in bad.items():
        (lab.tmp / "bad.yml").write_text(text)
        out = lab.server.ctl("access", "policy", "set", str(lab.tmp / "bad.yml"))
        assert out.returncode == 2 and message in out.stderr, (name, out.stderr)
    assert lab.server.ctl("access", "policy", "show").stdout == shown
    assert len(lab.ledger()) == before_ledger
    assert lab.orders() == []
    assert lab.server.ctl("ledger", "verify").returncode == 0
