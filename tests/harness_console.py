"""A populated controller for the console's tests: nodes in each trust state
with reasons, events and incidents, a recovery job held for approval, an access request
pending an approver. Written through the controller's own domain on the server's database
(the records are the ones the API and the engine would write)."""

from __future__ import annotations

from harness_domain import enroll_trusted, quarantine

from aegis_controller.access.identity import User
from aegis_controller.domain import Controller, open_controller
from aegis_controller.nodes import NodeState
from aegis_controller.recovery.states import JobState
from aegis_controller.settings import Settings
from aegis_controller.trust import transition
from aegis_protocol.access import AccessRequest
from aegis_protocol.events import Event, EventBatch
from harness_controller import Server

SUSPECT_REASON = "attestation differs from the expected profile: /usr/bin/sshd changed"
POLICY = """
roles:
  developer: [dev]
  security: [sec]
services:
  db:
    nodes: {role: db}
    port: tcp/5432
  db-ssh:
    nodes: {role: db}
    port: tcp/22
rules:
  - name: developers-db
    service: db
    roles: [developer]
    max_ttl: 1h
    approvers: [security]
    approvals: 1
  - name: developers-db-ssh
    service: db-ssh
    roles: [developer]
    max_ttl: 30m
    approvers: [security]
    approvals: 2
"""
#: The requester, as the domain receives a user once its token is verified (a stand-in
#: for an OIDC login: the console's tests are about the operator's side).
DANA = User(sub="dana-sub", name="dana", groups=("dev",))


def domain(server: Server) -> Controller:
    return open_controller(Settings.resolve(server.state, server.db,
                                            server.state / "ledger.anchor.json"))


def populate(ctl: Controller) -> dict[str, str]:
    """web1 trusted (the access target), web2 suspect with a reason, web3 quarantined with
    an incident and a recovery job held for approval, two pending access requests (one
    needing one approver, one needing two). Returns their ids."""
    for node_id in ("web1", "web2", "web3"):
        enroll_trusted(ctl, node_id)
    ctl.nodes.move("web2", transition(NodeState.TRUSTED, NodeState.SUSPECT, SUSPECT_REASON),
                   "test")
    events = [Event(ts_ns=1, kind="exec_denied", severity="warning",
                    data={"filename": "/usr/bin/nc", "pid": 4242, "uid": 0})]
    ctl.intake.store("web3", EventBatch(node_id="web3", events=events))
    quarantine(ctl, "web3")
    job = ctl.recovery.create("web3", actor="test")
    ctl.recovery.move(job["job_id"], JobState.AWAITING_APPROVAL,
                      "held: more than 2 nodes quarantined within 10 min", actor="test")
    ctl.access.set_node("web1", {"role": "db"}, "10.77.0.5", actor="test")
    ctl.access.set_policy(POLICY, actor="test")
    state = ctl.access.request(DANA, AccessRequest(service="db", ttl="30m",
                                                   reason="debug a slow query"), "10.77.0.9")
    two = ctl.access.request(DANA, AccessRequest(service="db-ssh", ttl="10m",
                                                 reason="read the slow query log"), "10.77.0.9")
    return {"job": job["job_id"], "request": state.request_id, "two_person": two.request_id}

