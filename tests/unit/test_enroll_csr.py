"""The CSR is checked before the bootstrap token is spent (a corrected retry enrolls),
and only ECDSA P-256 keys, what the agent makes, are certified."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from harness_domain import make_controller

from aegis_controller.domain import Controller
from aegis_controller.errors import Invalid
from aegis_controller.nodes import NodeState
from aegis_protocol.enrollment import EnrollRequest, node_csr
from aegis_protocol.signing import public_key_text

pytestmark = pytest.mark.unit


@pytest.fixture
def ctl(tmp_path: Path) -> Controller:
    return make_controller(tmp_path)


def enroll(ctl: Controller, token: str, csr: str, node: str = "n1") -> None:
    ctl.enrollment.enroll(EnrollRequest(
        node_id=node, token=token, csr_pem=csr,
        identity_key=public_key_text(Ed25519PrivateKey.generate().public_key())),
        "127.0.0.1:1")


@pytest.mark.parametrize("curve", [ec.SECP192R1(), ec.SECP256K1(), ec.SECP384R1()],
                         ids=lambda c: c.name)
def test_other_curves_are_refused_and_the_corrected_retry_enrolls(
        ctl: Controller, curve: ec.EllipticCurve) -> None:
    token = ctl.enrollment.issue_token("n1")
    records = sum(1 for _ in ctl.ledger.records())
    with pytest.raises(Invalid, match=f"must be an ECDSA P-256 .* got {curve.name}"):
        enroll(ctl, token, node_csr(ec.generate_private_key(curve), "n1"))
    assert sum(1 for _ in ctl.ledger.records()) == records
    enroll(ctl, token, node_csr(ec.generate_private_key(ec.SECP256R1()), "n1"))
    assert ctl.nodes.get("n1")["state"] == NodeState.ENROLLED


def test_a_csr_for_another_name_does_not_spend_the_token(ctl: Controller) -> None:
    token = ctl.enrollment.issue_token("n1")
    key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(Invalid, match="CN must be the node id 'n1'"):
        enroll(ctl, token, node_csr(key, "someone-else"))
    with pytest.raises(Invalid, match="not a PEM certificate signing request"):
        enroll(ctl, token, "-----BEGIN CERTIFICATE REQUEST-----\n" + "A" * 64)
    enroll(ctl, token, node_csr(key, "n1"))
    assert ctl.nodes.get("n1")["state"] == NodeState.ENROLLED
