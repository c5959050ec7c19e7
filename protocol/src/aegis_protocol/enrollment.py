"""Enrollment: a node trades a one-time bootstrap token and a CSR (its key never leaves
it) for a short-lived client certificate, the CA, and the controller's order key."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

NodeId = Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[a-z0-9][a-z0-9.-]*$")]


class EnrollRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    node_id: NodeId
    token: Annotated[str, Field(min_length=16, max_length=256)]
    csr_pem: Annotated[str, Field(min_length=64, max_length=8192)]


class EnrollResponse(BaseModel):
    model_config = ConfigDict(extra="forbid")

    node_id: str
    certificate_pem: str
    ca_pem: str
    order_key: str  # the controller's Ed25519 order-signing public key (aegis_protocol.signing)
    not_after: int  # unix seconds: rotate before this


class NodeStatus(BaseModel):
    model_config = ConfigDict(extra="forbid")

    node_id: str
    state: str
    reason: str
