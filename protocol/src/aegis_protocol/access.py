"""Just-in-time access on the wire: what a user sends to ``POST /v1/access`` (with the
user's JSON Web Token as bearer) and to the approve / deny / revoke routes, what the
controller answers, and the one duration syntax (``90s``, ``15m``, ``1h``, ``2d`` or
plain seconds) that the CLI, the policy file and the API share."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

_DURATION = re.compile(r"(\d{1,7})\s*([smhd]?)")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
DURATION_HELP = "a whole number with an optional unit s, m, h or d (e.g. 90s, 15m, 1h)"
AccessStatus = Literal["pending", "granted", "denied", "revoked", "expired"]

#: An SSH grant's certificate key ID is ``<principal>@aegis-access/<request id>``: sshd
#: logs it for each login, and the agent attaches the session's commands (exec events)
#: to the request by it, adding these keys to the event's data (an older controller
#: keeps them as data, an older agent sends none).
SSH_KEY_ID_MARK = "@aegis-access/"
SESSION_GRANT = "grant"  # data: the request id of the grant whose session ran the command
SESSION_SERIAL = "ssh_serial"  # data: the serial (decimal text) of the session's certificate
_REQUEST_ID = re.compile(r"[A-Za-z0-9-]{1,64}")


def ssh_key_id(principal: str, request_id: str) -> str:
    """The key ID the controller signs an SSH grant's certificate with."""
    return f"{principal}{SSH_KEY_ID_MARK}{request_id}"


def request_of_key_id(key_id: str) -> str | None:
    """The request id in an SSH grant's key ID; None for any other key ID."""
    _, mark, request_id = key_id.rpartition(SSH_KEY_ID_MARK)
    return request_id if mark and _REQUEST_ID.fullmatch(request_id) else None


def parse_duration(value: str | int, what: str = "duration") -> int:
    """Seconds from ``15m``, ``1h``, ``90`` ...; ValueError naming ``what`` otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"{what}: {value!r} is not a duration — {DURATION_HELP}")
    if isinstance(value, int):
        seconds = value
    else:
        m = _DURATION.fullmatch(str(value).strip())
        if m is None:
            raise ValueError(f"{what}: {value!r} is not a duration — {DURATION_HELP}")
        seconds = int(m.group(1)) * _UNIT[m.group(2)]
    if seconds < 1:
        raise ValueError(f"{what}: {value!r} must be at least 1 second")
    return seconds


class AccessRequest(BaseModel):
    """A user asks for ``service`` (a name of the access policy) for ``ttl``."""

    model_config = ConfigDict(extra="forbid")

    service: Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9._-]+$")]
    ttl: int | str = Field(description="seconds, or a duration such as 15m")
    reason: Annotated[str, Field(min_length=1, max_length=500)]
    node: Annotated[str | None, Field(max_length=63)] = Field(
        None, description="only this node of the service's nodes")
    ssh_public_key: Annotated[str | None, Field(max_length=16384)] = Field(
        None, description="for a service of kind ssh: your OpenSSH public key line; the "
        "grant carries a user certificate for it")

    @field_validator("ttl")
    @classmethod
    def _ttl(cls, value: int | str) -> int:
        return parse_duration(value, "ttl")


class AccessDecision(BaseModel):
    """An approver's (or the requester's, for revoke) word on a request."""

    model_config = ConfigDict(extra="forbid")

    reason: Annotated[str, Field(max_length=500)] = ""


class Approval(BaseModel):
    sub: str
    name: str
    at: int


class AccessEdge(BaseModel):
    node_id: str
    edge: str
    status: Literal["active", "revoked", "expired", "idle"]
    grant_order: str
    revoke_order: str | None = None
    krl_order: str | None = None
    #: wall-clock ns by which the node's agent saw the first packet (None: none yet)
    first_packet_ns: int | None = None
    #: the last packet the node's agent reported (with its heartbeats; None: none yet)
    last_packet_ns: int | None = None


class SshCertificate(BaseModel):
    """The user certificate of an ssh grant (public: useless without the user's key)."""

    certificate: str = Field(description="save as your key's -cert.pub file")
    serial: str
    key_id: str
    principal: str
    valid_after: int
    valid_before: int


class AccessState(BaseModel):
    """A request as the controller holds it."""

    request_id: str
    service: str
    rule: str
    status: AccessStatus
    sub: str
    user_name: str
    groups: list[str]
    source: str
    ttl: int
    reason: str
    approvals_needed: int
    approvals: list[Approval]
    created_at: int
    granted_at: int | None = None
    expires_at: int | None = None
    ended_at: int | None = None
    end_reason: str | None = None
    edges: list[AccessEdge] = Field(default_factory=list)
    ssh: SshCertificate | None = None
