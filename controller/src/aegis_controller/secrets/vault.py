"""The controller's narrow Vault client: exactly the calls its policy allows (roles/vault,
"Policies"), over httpx. Every failure is a :class:`VaultCallError` whose message is one
line naming the server, the call and the server's reason — never a token (the token
travels only in the ``X-Vault-Token`` header; wrapping tokens only in return values)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .settings import SecretsSettings

if TYPE_CHECKING:
    import httpx

TIMEOUT = 10.0
#: Pauses before the second and third try of a call whose connection broke before an answer
#: came (Vault's own Go client retries such calls twice, whatever the method): a keep-alive
#: connection closed by a proxy or load balancer just as a request went out fails that
#: request although the server is up. A timeout is not tried again (it already waited).
RETRY_PAUSES = (0.2, 0.5)
#: The secret_id metadata key (copied onto the node's token) naming the node.
OWNER = "aegis_node"


class VaultCallError(RuntimeError):
    """A call failed. ``status`` is the HTTP status (None: the server was not reached)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class WrappedSecretId:
    token: str = field(repr=False)  # the wrapping token: only the node gets it
    accessor: str
    ttl: int
    creation_path: str


class VaultClient:
    """One Vault-compatible server at ``addr`` with ``token``: :meth:`_call` is every
    request, its failures one :class:`VaultCallError` line."""

    def __init__(self, addr: str, token: str, ca_file: Path | None,
                 timeout: float = TIMEOUT) -> None:
        self.addr = addr
        import httpx  # only serve calls Vault: the command line stays quick

        verify: str | bool = str(ca_file) if ca_file else True
        self._http = httpx.Client(base_url=addr, verify=verify, timeout=timeout,
                                  headers={"X-Vault-Token": token})

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, what: str, body: dict | None = None,
              headers: dict[str, str] | None = None) -> dict[str, Any]:
        r = self._request(method, path, what, body, headers)
        if r.status_code >= 400:
            try:
                errors = "; ".join(str(x) for x in r.json().get("errors") or [])
            except ValueError:
                errors = r.text[:200]
            raise VaultCallError(f"the vault at {self.addr} refused to {what} "
                                 f"({r.status_code}): {errors or 'no reason given'}",
                                 r.status_code)
        if r.status_code == 204 or not r.content:
            return {}
        try:
            doc = r.json()
        except ValueError:
            raise VaultCallError(f"the vault at {self.addr} answered {what} with "
                                 "something that is not JSON") from None
        return doc if isinstance(doc, dict) else {}

    def _request(self, method: str, path: str, what: str, body: dict | None,
                 headers: dict[str, str] | None) -> httpx.Response:
        import httpx

        pauses = iter(RETRY_PAUSES)
        while True:
            try:
                return self._http.request(method, f"/v1/{path}", json=body, headers=headers)
            except httpx.HTTPError as e:
                pause = next(pauses, None)
                if pause is None or not isinstance(e, httpx.TransportError) or isinstance(
                        e, httpx.TimeoutException):
                    raise VaultCallError(f"cannot reach the vault at {self.addr} to {what}: "
                                         f"{type(e).__name__}: {e}") from None
            time.sleep(pause)


class SecretsVault(VaultClient):
    def __init__(self, settings: SecretsSettings, timeout: float = TIMEOUT) -> None:
        super().__init__(settings.addr, settings.token, settings.ca_file, timeout)
        self.settings = settings

    def wrap_secret_id(self, role: str, node_id: str) -> WrappedSecretId:
        """A response-wrapped secret_id of node role ``role``'s AppRole, for ``node_id``:
        the secret_id's metadata (``aegis_node``) goes on the token the node logs in with,
        so an accessor can be told to be this node's."""
        path = self.settings.creation_path(role)
        try:
            doc = self._call("POST", path, f"make a wrapped secret_id at {path}",
                             {"metadata": json.dumps({OWNER: node_id})},
                             {"X-Vault-Wrap-TTL": f"{self.settings.wrap_ttl}s"})
        except VaultCallError as e:
            if e.status in (400, 403, 404):
                raise VaultCallError(
                    f"{e} — is {role!r} a node role of the aegis.fleet.vault role "
                    f"(vault_node_roles, AppRole {self.settings.approle(role)} under "
                    f"auth/{self.settings.approle_mount}) and do --secrets-prefix and "
                    "--secrets-approle-mount match that role's vault_name_prefix and "
                    "vault_approle_mount? Fix the role or `aegis-controller node "
                    "secrets-role NODE ROLE`", e.status) from None
            raise
        info = doc.get("wrap_info")
        if not isinstance(info, dict) or not info.get("token"):
            raise VaultCallError(f"the vault at {self.settings.addr} did not wrap the "
                                 f"secret_id of {path} (no wrap_info in its answer)")
        return WrappedSecretId(str(info["token"]), str(info.get("accessor", "")),
                               int(info.get("ttl", self.settings.wrap_ttl)),
                               str(info.get("creation_path", "")))

    def revoke_accessor(self, accessor: str) -> None:
        self._call("POST", "auth/token/revoke-accessor", "revoke a token by accessor",
                   {"accessor": accessor})

    def lookup_accessor(self, accessor: str) -> dict[str, Any]:
        return self._call("POST", "auth/token/lookup-accessor", "look up a token by accessor",
                          {"accessor": accessor})

    def revoke_lease_prefix(self, lease_id: str) -> None:
        self._call("PUT", f"sys/leases/revoke-prefix/{lease_id}", f"revoke lease {lease_id}")

    def renew_self(self) -> None:
        self._call("POST", "auth/token/renew-self", "renew the controller's token", {})
