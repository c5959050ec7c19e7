"""Enrollment: a node trades a one-time bootstrap token and a CSR (its key never leaves
it) for a short-lived client certificate, the CA, and the controller's order key."""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .signing import sign

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
    model_config = ConfigDict(extra="forbid", strict=True)

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


class RenewClaim(BaseModel):
    """What a node's enrolled identity key signs to ask for a new certificate: a stolen
    TLS key alone cannot rotate the node's certificate."""

    model_config = ConfigDict(extra="forbid")

    purpose: Literal["certificate-renewal"] = "certificate-renewal"
    node_id: NodeId
    csr_pem: str


class RenewRequest(BaseModel):
    """A node's new CSR (a new P-256 key made on the node), sent over mutual TLS with its
    current certificate before that one expires, signed by its identity key."""

    model_config = ConfigDict(extra="forbid", strict=True)

    csr_pem: Annotated[str, Field(min_length=64, max_length=8192)]
    signature: Annotated[str, Field(min_length=1, max_length=256,
                                    description="the node's identity key's signature of "
                                                "RenewClaim(node_id, csr_pem)")]

    def claim(self, node_id: str) -> RenewClaim:
        return RenewClaim(node_id=node_id, csr_pem=self.csr_pem)


def renew_request(identity: Ed25519PrivateKey, node_id: str, csr_pem: str) -> RenewRequest:
    """A renewal request for ``csr_pem`` signed with the node's identity key."""
    return RenewRequest(csr_pem=csr_pem,
                        signature=sign(identity, RenewClaim(node_id=node_id, csr_pem=csr_pem)))


def csr_key_digest(csr_pem: str) -> str:
    """SHA-256 of the public key a CSR asks to certify: a renewal retried with the same key
    (its CSR bytes differ, ECDSA signatures are randomised) is the same request."""
    csr = x509.load_pem_x509_csr(csr_pem.encode())
    der = csr.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


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


class Listening(BaseModel):
    """One listening socket: TCP in LISTEN, or an unconnected bound UDP socket."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    proto: Literal["tcp", "udp"]
    address: Annotated[str, Field(max_length=45)]
    port: Annotated[int, Field(ge=0, le=65535)]
    uid: Annotated[int, Field(ge=0)] = 0


class Inventory(BaseModel):
    """What a node runs: OS, kernel, installed packages (name -> version), services
    (unit -> active/sub state) and listening sockets."""

    model_config = ConfigDict(extra="forbid")

    os: Name = ""
    kernel: Name = ""
    packages: dict[Name, Name] = Field(default_factory=dict, max_length=20000)
    services: dict[Name, Annotated[str, Field(max_length=64)]] = Field(
        default_factory=dict, max_length=5000)
    listening: list[Listening] = Field(default_factory=list, max_length=5000)

    def digest(self) -> str:
        """SHA-256 of the canonical JSON form: equal inventories, equal digests."""
        doc = self.model_dump(mode="json")
        doc["listening"] = sorted(doc["listening"], key=lambda s: json.dumps(s, sort_keys=True))
        text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


Digest = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
#: Where an agent loses events: a kernel ring buffer that was full (``exec``, ``connect``,
#: ``segment``) or the spool dropping unsent events past its bound (``spool``).
LostSource = Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[a-z0-9_]+$")]


class Heartbeat(BaseModel):
    """Sent every interval. The inventory travels only when it changed: otherwise the
    node sends just its digest, and the controller asks for the full one
    (``HeartbeatAck.inventory_wanted``) when the digest is not the one it holds."""

    model_config = ConfigDict(extra="forbid")

    node_id: NodeId
    boot_id: Annotated[str, Field(max_length=64)]
    inventory: Inventory | None = None
    inventory_digest: Digest | None = None
    #: events lost since the previous heartbeat the controller answered, per source; the
    #: controller makes a node that lost more than its threshold suspect
    events_lost: dict[LostSource, Annotated[int, Field(ge=0, le=2**63 - 1)]] = Field(
        default_factory=dict, max_length=16)
    #: the last packet on each edge with an idle timeout (a just-in-time grant) that
    #: carried traffic: edge spec -> wall-clock ns, as the agent's last sweep read it
    edges_seen: dict[Annotated[str, Field(max_length=200)],
                     Annotated[int, Field(ge=0, le=2**63 - 1)]] = Field(
        default_factory=dict, max_length=4096)

    @model_validator(mode="after")
    def _digest_matches(self) -> Heartbeat:
        if self.inventory is not None and self.inventory_digest not in (
                None, self.inventory.digest()):
            raise ValueError("inventory_digest is not the digest of inventory")
        return self


class HeartbeatAck(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inventory_wanted: bool = False
    #: the node's trust state at the controller (aegis_controller.nodes.NodeState); an
    #: agent holding leased secrets wipes them when this is anything but ``trusted``
    trust: Annotated[str, Field(max_length=32)] | None = None
