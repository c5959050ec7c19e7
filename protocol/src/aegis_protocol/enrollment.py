"""Enrollment: a node trades a one-time bootstrap token and a CSR (its key never leaves
it) for a short-lived client certificate, the CA, and the controller's order key."""

from __future__ import annotations

from typing import Annotated

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import BaseModel, ConfigDict, Field

NodeId = Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[a-z0-9][a-z0-9.-]*$")]


class WrappedBootstrap(BaseModel):
    """What a Vault-compatible server's response wrapping holds when the controller has
    the bootstrap token wrapped (``sys/wrapping/wrap``); the agent unwraps it once."""

    model_config = ConfigDict(extra="forbid")

    node_id: NodeId
    aegis_bootstrap_token: Annotated[str, Field(min_length=16, max_length=256, repr=False)]


def node_csr(key: ec.EllipticCurvePrivateKey, node_id: str) -> str:
    """The CSR a node sends to enroll: its TLS key, CN = its node id (PEM)."""
    req = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_id)]))
           .sign(key, hashes.SHA256()))
    return req.public_bytes(serialization.Encoding.PEM).decode()


class EnrollRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    node_id: NodeId
    token: Annotated[str, Field(min_length=16, max_length=256)]
    csr_pem: Annotated[str, Field(min_length=64, max_length=8192)]
    identity_key: Annotated[str, Field(min_length=40, max_length=64,
                                       description="the node's Ed25519 public key (raw, "
                                                   "URL-safe base64): signs its reports")]


class EnrollResponse(BaseModel):
    model_config = ConfigDict(extra="forbid")

    node_id: str
    certificate_pem: str
    ca_pem: str
    order_key: str  # the controller's Ed25519 order-signing public key (aegis_protocol.signing)
    not_after: int  # unix seconds: rotate before this


class RenewRequest(BaseModel):
    """A node's new CSR (a new P-256 key made on the node), sent over mutual TLS with its
    current certificate before that one expires."""

    model_config = ConfigDict(extra="forbid")

    csr_pem: Annotated[str, Field(min_length=64, max_length=8192)]


class RenewResponse(BaseModel):
    model_config = ConfigDict(extra="forbid")

    certificate_pem: str
    not_after: int  # unix seconds


class NodeStatus(BaseModel):
    model_config = ConfigDict(extra="forbid")

    node_id: str
    state: str
    reason: str


Name = Annotated[str, Field(max_length=256)]


class Inventory(BaseModel):
    model_config = ConfigDict(extra="forbid")

    os: Name = ""
    kernel: Name = ""
    packages: dict[Name, Name] = Field(default_factory=dict, max_length=20000)
    services: dict[Name, Annotated[str, Field(max_length=64)]] = Field(
        default_factory=dict, max_length=5000)
    listening: list[dict[str, str | int]] = Field(default_factory=list, max_length=5000)


class Heartbeat(BaseModel):
    model_config = ConfigDict(extra="forbid")

    node_id: NodeId
    boot_id: Annotated[str, Field(max_length=64)]
    inventory: Inventory = Field(default_factory=Inventory)
