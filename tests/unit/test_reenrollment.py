"""Re-enrollment goes through the one transition function: a suspect, quarantined or
retired node is not reset to ``enrolled`` by enrolling again; an operator must allow it
(``node reenroll``, recorded), and the token is not spent by the refusal."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness_domain import enroll_request, make_controller

from aegis_controller.domain import Controller
from aegis_controller.errors import Conflict, Forbidden
from aegis_controller.ledger import Kind
from aegis_controller.nodes import NodeState
from aegis_controller.trust import transition

pytestmark = pytest.mark.unit


@pytest.fixture
def ctl(tmp_path: Path) -> Controller:
    return make_controller(tmp_path)


def _enroll(ctl: Controller, node: str = "n1") -> None:
    ctl.enrollment.enroll(enroll_request(node, ctl.enrollment.issue_token(node)), "127.0.0.1:1")


@pytest.mark.parametrize("state", [NodeState.SUSPECT, NodeState.QUARANTINED,
                                   NodeState.RETIRED])
def test_reenrolling_a_judged_node_needs_an_operator(ctl: Controller, state: NodeState) -> None:
    _enroll(ctl)
    ctl.nodes.move("n1", transition(NodeState.ENROLLED, state, "test verdict"), "test")
    token = ctl.enrollment.issue_token("n1")
    with pytest.raises(Forbidden, match=f"node is {state}: re-enrolling it needs an operator"):
        ctl.enrollment.enroll(enroll_request("n1", token), "127.0.0.1:2")
    assert ctl.nodes.get("n1")["state"] == state
    refused = [r.body for r in ctl.ledger.records() if r.kind == Kind.TOKEN_REFUSED]
    assert refused and "needs an operator" in refused[-1]["reason"]
    ctl.enrollment.allow_reenrollment("n1", "rebuilt by hand", "operator:alice")
    assert ctl.nodes.get("n1")["state"] == NodeState.PROVISIONING
    ctl.enrollment.enroll(enroll_request("n1", token), "127.0.0.1:3")  # the same token: not spent
    assert ctl.nodes.get("n1")["state"] == NodeState.ENROLLED
    moves = [(r.body["from"], r.body["to"], r.actor) for r in ctl.ledger.records()
             if r.kind == Kind.STATE_CHANGE]
    assert moves[-2:] == [(state, "provisioning", "operator:alice"),
                          ("provisioning", "enrolled", "node:n1")]


def test_a_trusted_node_reenrolls_to_enrolled_through_a_recorded_move(ctl: Controller) -> None:
    _enroll(ctl)
    ctl.nodes.move("n1", transition(NodeState.ENROLLED, NodeState.TRUSTED, "ok"), "test")
    _enroll(ctl)
    assert ctl.nodes.get("n1")["state"] == NodeState.ENROLLED
    last = [r.body for r in ctl.ledger.records() if r.kind == Kind.STATE_CHANGE][-1]
    assert (last["from"], last["to"]) == ("trusted", "enrolled")


def test_allow_reenrollment_is_only_for_judged_nodes(ctl: Controller) -> None:
    _enroll(ctl)
    with pytest.raises(Conflict, match="only a suspect, quarantined or retired node"):
        ctl.enrollment.allow_reenrollment("n1", "why not", "operator:alice")


def test_node_state_is_never_written_outside_move(ctl: Controller) -> None:
    _enroll(ctl)
    with pytest.raises(ValueError, match=r"only through NodeStore\.move"):
        ctl.nodes.update("n1", state="trusted")
