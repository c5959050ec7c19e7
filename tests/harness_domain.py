"""The controller's domain on a temporary state directory, for tests that call it
directly (no server): one ``make_controller`` and a valid enrollment request."""

from __future__ import annotations

import itertools
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aegis_controller.domain import Controller, open_controller
from aegis_controller.ledger import init_keys
from aegis_controller.nodes import NodeState
from aegis_controller.settings import Settings
from aegis_controller.trust import transition
from aegis_protocol.enrollment import EnrollRequest, node_csr
from aegis_protocol.signing import public_key_text


def make_controller(state: Path) -> Controller:
    init_keys(state / "keys")
    return open_controller(Settings.resolve(
        state, f"sqlite:///{state / 'controller.db'}", state / "ledger.anchor.json"))


def enroll_request(node_id: str, token: str, identity: Ed25519PrivateKey | None = None,
                   curve: ec.EllipticCurve | None = None, cn: str | None = None
                   ) -> EnrollRequest:
    """A request as the agent makes it (P-256 CSR, CN = node id) unless told otherwise."""
    identity = identity or Ed25519PrivateKey.generate()
    return EnrollRequest(node_id=node_id, token=token,
                         csr_pem=node_csr(ec.generate_private_key(curve or ec.SECP256R1()),
                                          cn or node_id),
                         identity_key=public_key_text(identity.public_key()))


_peers = itertools.count(1)


def enroll_trusted(ctl: Controller, node_id: str) -> None:
    """``node_id`` enrolls with a one-time token and a fresh key (each from another source
    address, below the enrollment rate limit) and is attested trusted (the recorded move an
    attestation makes)."""
    token = ctl.enrollment.issue_token(node_id, actor="test")
    n = next(_peers)
    ctl.enrollment.enroll(enroll_request(node_id, token), f"10.9.{n // 250}.{n % 250}:4433")
    ctl.nodes.move(node_id, transition(NodeState.ENROLLED, NodeState.TRUSTED,
                                       "attestation matches the expected profile"), "test")


def quarantine(ctl: Controller, node_id: str,
               reason: str = "incident: unknown binary executed") -> None:
    """A trusted node quarantined, as an incident does (a recorded move)."""
    ctl.nodes.move(node_id, transition(NodeState.TRUSTED, NodeState.QUARANTINED, reason),
                   "test")
