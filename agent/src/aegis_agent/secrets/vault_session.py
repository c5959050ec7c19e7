"""The sink's calls to the Vault-compatible server (OpenBao, Vault), one method each.

Every failure is a :class:`VaultError` with one line that names the call and the server,
never a token, a secret_id or a value (Vault's own error text names paths, not tokens).
``unreachable`` tells a server that did not answer (back off, keep what is held) from one
that answered no.

The wrapping token of a ``fetch-secrets`` order is looked up first
(``sys/wrapping/lookup``, no authentication needed) and used only if its
``creation_path`` is this node's AppRole secret-id path: a token wrapped by anything else
is not unwrapped, so it stays valid for whoever made it (the check Vault Agent makes).
"""

from __future__ import annotations

import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from aegis_protocol.secrets import secret_id_path

TIMEOUT = 10.0
#: asked of renew-self once after login: Vault caps it at the token's max TTL and so
#: tells when the token ends for good (lookup-self does not say)
PROBE_INCREMENT = "87600h"


class VaultError(RuntimeError):
    """A call failed; ``unreachable``: the server did not answer at all."""

    def __init__(self, message: str, *, unreachable: bool = False, status: int | None = None):
        super().__init__(message)
        self.unreachable = unreachable
        self.status = status


class UnwrapRefused(VaultError):
    """The wrapping token is spent, expired, or was made by another path."""


@dataclass(frozen=True)
class Login:
    token: str = field(repr=False)
    accessor: str
    ttl: int
    renewable: bool


@dataclass(frozen=True)
class DbCreds:
    lease_id: str
    ttl: int
    renewable: bool
    username: str
    password: str = field(repr=False)


def vault_errors(r: httpx.Response) -> str:
    try:
        errors = r.json().get("errors") or []
        return "; ".join(str(e) for e in errors)[:300] or f"HTTP {r.status_code}"
    except ValueError:
        return f"HTTP {r.status_code}"


class VaultSession:
    """One HTTP client to the server; tokens are passed per call, never kept here."""

    def __init__(self, url: str, ca_file: Path | None = None, timeout: float = TIMEOUT) -> None:
        self.url = url
        verify: ssl.SSLContext | bool = True
        if ca_file is not None:
            verify = ssl.create_default_context(cafile=str(ca_file))
        self._client = httpx.Client(base_url=url, verify=verify, timeout=timeout)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> VaultSession:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _call(self, what: str, method: str, path: str, token: str | None = None,
              json: dict[str, Any] | None = None, ok: tuple[int, ...] = (200,)) -> dict:
        headers = {"X-Vault-Token": token} if token is not None else {}
        try:
            r = self._client.request(method, f"/v1/{path}", headers=headers, json=json)
        except httpx.TransportError as e:
            raise VaultError(f"{what} at {self.url}: server unreachable ({type(e).__name__})",
                             unreachable=True) from None
        if r.status_code not in ok:
            raise VaultError(f"{what} at {self.url} failed ({r.status_code}): {vault_errors(r)}",
                             status=r.status_code)
        if r.status_code == 204 or not r.content:
            return {}
        try:
            body = r.json()
        except ValueError:
            raise VaultError(f"{what} at {self.url}: the answer is not JSON") from None
        return body if isinstance(body, dict) else {}

    # -- the wrapped secret_id ----------------------------------------------------------------
    def unwrap_secret_id(self, wrapping_token: str, approle_mount: str, role: str) -> str:
        """The secret_id in ``wrapping_token``, after checking it was made by ``role``'s
        secret-id path; UnwrapRefused when it is spent, expired or foreign."""
        want = secret_id_path(approle_mount, role)
        try:
            look = self._call("looking up the wrapping token", "POST", "sys/wrapping/lookup",
                              json={"token": wrapping_token})
        except VaultError as e:
            if e.status == 400:
                raise UnwrapRefused(
                    f"the wrapped secret_id is not valid at {self.url}: it was already "
                    "unwrapped or it expired. If this agent did not unwrap it, someone else "
                    "may hold the secret_id: destroy the role's secret_ids and send a new "
                    "fetch-secrets order", status=400) from None
            raise
        path = (look.get("data") or {}).get("creation_path")
        if path != want:
            raise UnwrapRefused(f"the wrapping token was created by {path!r}, not {want!r}: it "
                                "is not this node's secret_id; not unwrapping it")
        try:
            body = self._call("unwrapping the secret_id", "POST", "sys/wrapping/unwrap",
                              token=wrapping_token)
        except VaultError as e:
            if e.status == 400:
                raise UnwrapRefused(f"the wrapped secret_id was unwrapped by someone else at "
                                    f"{self.url} between lookup and unwrap", status=400) from None
            raise
        secret_id = (body.get("data") or {}).get("secret_id")
        if not isinstance(secret_id, str) or not secret_id:
            raise UnwrapRefused("the unwrapped answer holds no secret_id")
        return secret_id

    # -- the token ------------------------------------------------------------------------------
    def login(self, approle_mount: str, role_id: str, secret_id: str) -> Login:
        body = self._call("AppRole login", "POST", f"auth/{approle_mount}/login",
                          json={"role_id": role_id, "secret_id": secret_id})
        auth = body.get("auth") or {}
        if not auth.get("client_token"):
            raise VaultError(f"AppRole login at {self.url}: the answer holds no token")
        return Login(auth["client_token"], str(auth.get("accessor", "")),
                     int(auth.get("lease_duration") or 0), bool(auth.get("renewable")))

    def renew_self(self, token: str, increment: int | str | None = None) -> int:
        """The token's TTL after renewal (Vault caps it at the max TTL)."""
        body = self._call("renewing the token", "POST", "auth/token/renew-self", token=token,
                          json={"increment": increment} if increment is not None else {})
        return int((body.get("auth") or {}).get("lease_duration") or 0)

    def max_expiry(self, token: str, ttl: int) -> int:
        """Epoch seconds when the token reaches its max TTL: renew-self asking for far more
        than allowed answers the capped TTL; then back to ``ttl`` at once."""
        started = time.time()
        capped = self.renew_self(token, PROBE_INCREMENT)
        self.renew_self(token, ttl)
        return int(started + capped)

    def revoke_self(self, token: str) -> None:
        self._call("revoking the token", "POST", "auth/token/revoke-self", token=token,
                   ok=(200, 204))

    # -- secrets --------------------------------------------------------------------------------
    def read_kv(self, token: str, mount: str, path: str) -> dict[str, Any]:
        body = self._call(f"reading KV {mount}/{path}", "GET", f"{mount}/data/{path}",
                          token=token)
        data = (body.get("data") or {}).get("data")
        if not isinstance(data, dict):
            raise VaultError(f"reading KV {mount}/{path} at {self.url}: no data (is it a KV "
                             "version 2 mount?)")
        return data

    def db_creds(self, token: str, mount: str, role: str) -> DbCreds:
        body = self._call(f"reading database credentials {mount}/creds/{role}", "GET",
                          f"{mount}/creds/{role}", token=token)
        data = body.get("data") or {}
        if not data.get("username") or "password" not in data or not body.get("lease_id"):
            raise VaultError(f"reading {mount}/creds/{role} at {self.url}: no leased login in "
                             "the answer")
        return DbCreds(body["lease_id"], int(body.get("lease_duration") or 0),
                       bool(body.get("renewable")), str(data["username"]), str(data["password"]))

    def renew_lease(self, token: str, lease_id: str, increment: int) -> int:
        body = self._call("renewing a lease", "PUT", "sys/leases/renew", token=token,
                          json={"lease_id": lease_id, "increment": increment})
        return int(body.get("lease_duration") or 0)
