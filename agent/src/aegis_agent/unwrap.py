"""Unwrap a response-wrapped bootstrap token at the Vault-compatible server.

A wrapping token opens once. Before using it the agent looks it up
(``sys/wrapping/lookup``, no authentication needed) and insists that it was made by
``sys/wrapping/wrap`` — a token made any other way is not one the controller issued —
then unwraps it (``sys/wrapping/unwrap``) and checks that the bootstrap token inside is
for this node. The unwrapped token stays in memory only.
"""

from __future__ import annotations

import ssl

import httpx
from pydantic import ValidationError

from aegis_protocol.enrollment import WrappedBootstrap

from .config import VaultConfig
from .secrets.vault_session import vault_errors

WRAP_PATH = "sys/wrapping/wrap"


class UnwrapError(RuntimeError):
    """The wrapping token cannot give this node a bootstrap token (message says why);
    ``spent``: it was already unwrapped or expired, so trying again is pointless."""

    def __init__(self, message: str, *, spent: bool = False) -> None:
        super().__init__(message)
        self.spent = spent


def _gone(vault: VaultConfig) -> UnwrapError:
    return UnwrapError(
        f"the wrapped bootstrap token is not valid at {vault.url}: it was already unwrapped "
        "or it expired. If this agent did not unwrap it, someone else may hold the bootstrap "
        "token: revoke it and issue a new one (aegis-controller token issue)", spent=True)


def unwrap_bootstrap(vault: VaultConfig, wrapping_token: str, node_id: str) -> str:
    """The bootstrap token inside ``wrapping_token``, checked to be meant for ``node_id``."""
    verify: ssl.SSLContext | bool = True
    if vault.ca_file is not None:
        verify = ssl.create_default_context(cafile=vault.ca_file)
    with httpx.Client(base_url=vault.url, verify=verify, timeout=30) as c:
        look = c.post("/v1/sys/wrapping/lookup", json={"token": wrapping_token})
        if look.status_code == 400:
            raise _gone(vault)
        if look.status_code != 200:
            raise UnwrapError(f"looking up the wrapping token at {vault.url} failed "
                              f"({look.status_code}): {vault_errors(look)}")
        path = look.json().get("data", {}).get("creation_path")
        if path != WRAP_PATH:
            raise UnwrapError(f"the wrapping token was created by {path!r}, not {WRAP_PATH!r}:"
                              " it is not one the controller issued; not unwrapping it")
        r = c.post("/v1/sys/wrapping/unwrap", headers={"X-Vault-Token": wrapping_token})
    if r.status_code == 400:
        raise _gone(vault)
    if r.status_code != 200:
        raise UnwrapError(f"unwrapping at {vault.url} failed ({r.status_code}): {vault_errors(r)}")
    try:
        inner = WrappedBootstrap.model_validate(r.json().get("data"))
    except (ValueError, ValidationError):
        raise UnwrapError("the unwrapped response is not an Aegis bootstrap token") from None
    if inner.node_id != node_id:
        raise UnwrapError(f"the wrapped bootstrap token is for node {inner.node_id!r}, this is "
                          f"{node_id!r}: put the right token on this node")
    return inner.aegis_bootstrap_token
