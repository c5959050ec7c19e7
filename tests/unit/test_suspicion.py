"""A node cannot clear its own suspicion: after a measurement mismatch, a report claiming
the expected values leaves it suspect until an operator trusts it (recorded); only a
heartbeat-deadline suspicion clears itself on a matching attestation."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aegis_controller.domain import Controller, open_controller
from aegis_controller.errors import Conflict
from aegis_controller.ledger import Kind, init_keys
from aegis_controller.nodes import NodeState
from aegis_controller.settings import Settings
from aegis_protocol.attestation import AttestationReport, ExpectedProfile, Measurement, SignedReport
from aegis_protocol.enrollment import EnrollRequest, node_csr
from aegis_protocol.signing import public_key_text, sign

pytestmark = pytest.mark.unit

GOOD = "1" * 64
IDENTITY = Ed25519PrivateKey.generate()


@pytest.fixture
def ctl(tmp_path: Path) -> Controller:
    init_keys(tmp_path / "keys")
    ctl = open_controller(Settings.resolve(
        tmp_path, f"sqlite:///{tmp_path / 'controller.db'}", tmp_path / "ledger.anchor.json"))
    token = ctl.enrollment.issue_token("n1")
    ctl.enrollment.enroll(EnrollRequest(
        node_id="n1", token=token,
        csr_pem=node_csr(ec.generate_private_key(ec.SECP256R1()), "n1"),
        identity_key=public_key_text(IDENTITY.public_key())), "127.0.0.1:1")
    ctl.attestation.set_profile("n1", ExpectedProfile(golden={"/etc/a": GOOD}), "operator:a")
    return ctl


def attest(ctl: Controller, digest: str) -> str:
    """The node's state after it reports ``digest`` for /etc/a."""
    report = AttestationReport(
        node_id="n1", nonce=ctl.attestation.challenge("n1").nonce, measured_at=int(time.time()),
        measurement=Measurement(kernel_release="6.1", boot_id="b", agent_version="0.1.0",
                                golden={"/etc/a": digest}))
    return ctl.attestation.attest("n1", SignedReport(report=report,
                                                     signature=sign(IDENTITY, report))).state


def test_a_measurement_suspicion_is_not_cleared_by_the_node(ctl: Controller) -> None:
    assert attest(ctl, GOOD) == NodeState.TRUSTED
    assert attest(ctl, "9" * 64) == NodeState.SUSPECT
    assert ctl.nodes.get("n1")["reason"].startswith("attestation mismatch: golden /etc/a")
    assert attest(ctl, GOOD) == NodeState.SUSPECT  # claims the expected values: not enough
    assert ctl.nodes.get("n1")["state"] == NodeState.SUSPECT
    ctl.attestation.clear_suspicion("n1", "checked /etc/a by hand", "operator:alice")
    node = ctl.nodes.get("n1")
    assert node["state"] == NodeState.TRUSTED
    assert "cleared by an operator: checked /etc/a by hand" in node["reason"]
    last = [r for r in ctl.ledger.records() if r.kind == Kind.STATE_CHANGE][-1]
    assert (last.body["from"], last.body["to"], last.actor) == ("suspect", "trusted",
                                                                "operator:alice")
    with pytest.raises(Conflict, match="not suspect"):
        ctl.attestation.clear_suspicion("n1", "again", "operator:alice")


def test_a_deadline_suspicion_clears_itself_on_a_matching_attestation(ctl: Controller) -> None:
    assert attest(ctl, GOOD) == NodeState.TRUSTED
    assert ctl.attestation.check_deadlines(60, now=int(time.time()) + 3600) == ["n1"]
    assert ctl.nodes.get("n1")["reason"].startswith("no heartbeat for")
    assert attest(ctl, GOOD) == NodeState.TRUSTED
