"""Bootstrap tokens response-wrapped by a Vault-compatible server (OpenBao, Vault).

With a server configured, ``aegis-controller token issue`` does not print the bootstrap
token itself: it has the server wrap it (``sys/wrapping/wrap``) and prints the wrapping
token. That one can be unwrapped exactly once and only until its TTL runs out, so a
token read on its way to the node shows up as a failed unwrap on the node instead of a
silent copy. The node's agent unwraps it at the same server before it enrolls.

Configuration (the usual client variables, ``BAO_*`` first):

* address: ``--vault-addr`` / ``AEGIS_VAULT_ADDR`` / ``BAO_ADDR`` / ``VAULT_ADDR``
* token allowed to ``update`` ``sys/wrapping/wrap``: ``--vault-token-file`` /
  ``BAO_TOKEN`` / ``VAULT_TOKEN``
* CA for an https address: ``--vault-ca`` / ``BAO_CACERT`` / ``VAULT_CACERT``

The server is spoken to through ``hvac`` (its ``sys.wrap``); its errors become
:class:`VaultError` with the server's own message.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from aegis_protocol.enrollment import WrappedBootstrap
from aegis_protocol.urls import checked_url

#: The HTTP status behind each of hvac's error classes, by class name (for messages).
_STATUS: dict[str, int] = {
    "InvalidRequest": 400, "Unauthorized": 401, "Forbidden": 403, "InvalidPath": 404,
    "RateLimitExceeded": 429, "InternalServerError": 500, "VaultNotInitialized": 501,
    "BadGateway": 502, "VaultDown": 503,
}


class VaultError(RuntimeError):
    """The Vault-compatible server could not wrap the token (the message says why)."""


#: Where the server's address and CA come from when no option gives them (first set wins).
ADDR_ENV = ("AEGIS_VAULT_ADDR", "BAO_ADDR", "VAULT_ADDR")
CA_ENV = ("BAO_CACERT", "VAULT_CACERT")


def first_env(*names: str) -> str:
    """The value of the first of ``names`` set in the environment ('' if none is)."""
    return next((os.environ[n] for n in names if os.environ.get(n)), "")


_env = first_env


@dataclass(frozen=True)
class VaultSettings:
    addr: str
    token: str = field(repr=False)
    ca_file: Path | None = None

    @classmethod
    def resolve(cls, addr: str | None, token_file: str | None,
                ca_file: str | None) -> VaultSettings | None:
        """Settings from options, then the environment; None when no address is set."""
        addr = addr or _env(*ADDR_ENV)
        if not addr:
            return None
        try:
            checked_url(addr, "the vault address")
        except ValueError as err:
            raise VaultError(str(err)) from None
        if token_file:
            try:
                token = Path(token_file).read_text().strip()
            except OSError as e:
                raise VaultError(f"cannot read the vault token file {token_file}: "
                                 f"{e.strerror}") from None
        else:
            token = _env("BAO_TOKEN", "VAULT_TOKEN")
        if not token:
            raise VaultError(f"a vault address is set ({addr}) but no token: put one in "
                             "BAO_TOKEN (or VAULT_TOKEN) or pass --vault-token-file")
        ca = ca_file or _env(*CA_ENV)
        return cls(addr.rstrip("/"), token, Path(ca) if ca else None)

    def _verify(self) -> str | bool:
        """What hvac's ``verify`` takes: the CA file (checked to load) or True."""
        if self.ca_file is None:
            return True
        try:
            ssl.create_default_context(cafile=self.ca_file)
        except (OSError, ssl.SSLError) as e:
            raise VaultError(f"cannot load the vault CA {self.ca_file}: {e}") from None
        return str(self.ca_file)


@dataclass(frozen=True)
class Wrapped:
    token: str = field(repr=False)  # the wrapping token: what the node gets
    accessor: str  # not secret; names the wrapping token in the server's audit log
    ttl: int
    creation_path: str


def wrap_bootstrap(settings: VaultSettings, node_id: str, token: str, ttl: int) -> Wrapped:
    """Have the server wrap ``token`` for ``node_id`` for ``ttl`` seconds."""
    try:
        payload = WrappedBootstrap(node_id=node_id, aegis_bootstrap_token=token).model_dump()
    except ValueError:
        raise VaultError(f"node id {node_id!r} is not valid: lower-case letters, digits, "
                         "'.' and '-', at most 63 characters") from None
    # imported here: hvac and requests cost every other command about 60 ms at start
    import hvac
    import requests
    from hvac import exceptions as hvac_errors

    client = hvac.Client(url=settings.addr, token=settings.token, verify=settings._verify(),
                         timeout=30)
    try:
        doc = client.sys.wrap(payload=payload, ttl=f"{ttl}s")
    except requests.RequestException as e:
        raise VaultError(f"cannot reach the vault at {settings.addr}: {e}") from None
    except hvac_errors.Forbidden:
        raise VaultError(f"the vault at {settings.addr} refused the token (403): it needs "
                         "the 'update' capability on sys/wrapping/wrap") from None
    except hvac_errors.VaultError as e:
        status = _STATUS.get(type(e).__name__, "?")
        errors = "; ".join(e.errors or []) or (e.text or "")[:200]
        raise VaultError(f"the vault at {settings.addr} did not wrap the token "
                         f"({status}): {errors}") from None
    finally:
        client.adapter.close()
    info = doc.get("wrap_info") if isinstance(doc, dict) else None
    if not isinstance(info, dict) or not info.get("token"):
        raise VaultError(f"the vault at {settings.addr} did not wrap the token "
                         f"(no wrap_info in the answer): {str(doc)[:200]}")
    return Wrapped(info["token"], str(info.get("accessor", "")), int(info.get("ttl", ttl)),
                   str(info.get("creation_path", "")))
