"""Leased secrets: what the controller and the agent agree on.

The controller hands a trusted node a **response-wrapped AppRole secret_id** in a signed
``fetch-secrets`` order (:class:`aegis_protocol.commands.FetchSecrets`). The agent checks
that the wrapping token was made by :func:`secret_id_path` of *its own* AppRole (the
check Vault Agent makes), unwraps it once, logs in, renders its secrets on tmpfs and
answers with a :class:`SecretsReport` as the acknowledgment's detail (JSON). The report
holds only what the controller needs to revoke everything on its own later: the token's
**accessor** (never the token), the lease ids and the database login names (never a
password).

Agent events about secrets are ``agent`` events whose ``data.what`` is one of
:data:`SECRET_EVENTS`; ``secrets_unwrap_failed`` is critical (a wrapping token that was
already used or made elsewhere: someone else may hold the secret_id).
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

#: Longest wrap TTL the controller asks for (seconds): the wrapping token lives only
#: as long as the order takes to reach the node.
MAX_WRAP_TTL = 60

#: Vault names: AppRole names, mount paths (no leading or trailing slash).
NAME = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
MOUNT = r"^[a-z0-9][a-z0-9_.-]{0,62}(/[a-z0-9][a-z0-9_.-]{0,62}){0,3}$"

#: ``data.what`` of the agent's secret events.
SECRETS_FETCHED = "secrets_fetched"  # info: logged in, files rendered
SECRETS_UNWRAP_FAILED = "secrets_unwrap_failed"  # critical: spent, foreign or wrong path
SECRETS_RENEW_FAILED = "secrets_renew_failed"  # warning: Vault refused or unreachable
SECRETS_ROTATED = "secrets_rotated"  # info: a value changed, files re-rendered, reloaded
SECRETS_EXPIRED = "secrets_expired"  # warning: a lease ran out while Vault was away
SECRETS_WIPED = "secrets_wiped"  # notice: files overwritten and removed, token revoked
SECRET_EVENTS = (SECRETS_FETCHED, SECRETS_UNWRAP_FAILED, SECRETS_RENEW_FAILED,
                 SECRETS_ROTATED, SECRETS_EXPIRED, SECRETS_WIPED)


def secret_id_path(approle_mount: str, approle: str) -> str:
    """The path whose response-wrapped answer a node accepts as its secret_id (the
    wrapping token's ``creation_path``)."""
    for value, pattern, what in ((approle_mount, MOUNT, "AppRole mount"),
                                 (approle, NAME, "AppRole name")):
        if not re.match(pattern, value):
            raise ValueError(f"bad {what} {value!r}: lower-case letters, digits, '.', '_', '-'")
    return f"auth/{approle_mount}/role/{approle}/secret-id"


class SecretsReport(BaseModel):
    """The detail of a done ``fetch-secrets`` (or ``rotate secrets``) acknowledgment."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Annotated[str, Field(pattern=NAME)]
    accessor: Annotated[str, Field(min_length=1, max_length=128)]
    token_ttl: Annotated[int, Field(ge=0, le=10**9)]
    #: epoch seconds when the token reaches its max TTL: the controller sends a new
    #: ``fetch-secrets`` order well before (the node cannot log in again on its own)
    expires_at: Annotated[int, Field(ge=0, le=2**40)]
    leases: Annotated[list[Annotated[str, Field(max_length=512)]], Field(max_length=64)] = []
    logins: Annotated[list[Annotated[str, Field(max_length=128)]], Field(max_length=64)] = []
    files: Annotated[list[Annotated[str, Field(max_length=255)]], Field(max_length=64)] = []
