"""The secrets gate's configuration: each value from its command-line option, else its
environment variable, else the default. Without a token file the gate is off.

* Vault-compatible server: ``--vault-addr`` / ``AEGIS_VAULT_ADDR`` / ``BAO_ADDR`` /
  ``VAULT_ADDR``; CA for https: ``--vault-ca`` / ``BAO_CACERT`` / ``VAULT_CACERT``
* the controller's narrow token (what the aegis.fleet.vault role wrote to
  ``vault_controller_token_file``): ``--secrets-token-file`` / ``AEGIS_SECRETS_TOKEN_FILE``
* AppRole mount: ``--secrets-approle-mount`` / ``AEGIS_SECRETS_APPROLE_MOUNT``
  (default ``aegis-approle``)
* name prefix: ``--secrets-prefix`` / ``AEGIS_SECRETS_PREFIX`` (default ``aegis``; the
  AppRole of node role R is ``<prefix>-<R>``)
* wrap TTL: ``--secrets-wrap-ttl`` / ``AEGIS_SECRETS_WRAP_TTL`` (seconds, default and
  most :data:`~aegis_protocol.secrets.MAX_WRAP_TTL`)
* PostgreSQL DSN used only to verify a revoked login is gone:
  ``--secrets-verify-dsn`` / ``AEGIS_SECRETS_VERIFY_DSN`` (optional)
"""

from __future__ import annotations

import argparse
import re
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from aegis_protocol.secrets import MAX_WRAP_TTL, MOUNT, NAME, secret_id_path
from aegis_protocol.urls import checked_url

from ..vault_wrap import ADDR_ENV, CA_ENV
from ..vault_wrap import first_env as _env

DEFAULT_APPROLE_MOUNT = "aegis-approle"
DEFAULT_PREFIX = "aegis"


class SecretsConfigError(ValueError):
    """The gate's configuration is wrong; the message says which value and how to fix it."""


@dataclass(frozen=True)
class SecretsSettings:
    addr: str
    token: str = field(repr=False)
    token_file: Path
    ca_file: Path | None = None
    approle_mount: str = DEFAULT_APPROLE_MOUNT
    prefix: str = DEFAULT_PREFIX
    wrap_ttl: int = MAX_WRAP_TTL
    verify_dsn: str | None = field(default=None, repr=False)

    @classmethod
    def resolve(cls, *, token_file: str | None = None, addr: str | None = None,
                ca_file: str | None = None, approle_mount: str | None = None,
                prefix: str | None = None, wrap_ttl: int | str | None = None,
                verify_dsn: str | None = None) -> SecretsSettings | None:
        """The settings, or None when no token file is given (the gate is off)."""
        token_path = token_file or _env("AEGIS_SECRETS_TOKEN_FILE")
        if not token_path:
            return None
        addr = addr or _env(*ADDR_ENV)
        if not addr:
            raise SecretsConfigError(
                f"a secrets token file is set ({token_path}) but no Vault address: pass "
                "--vault-addr or set AEGIS_VAULT_ADDR (or BAO_ADDR, VAULT_ADDR)")
        try:
            checked_url(addr, "the vault address")
        except ValueError as err:
            raise SecretsConfigError(str(err)) from None
        try:
            token = Path(token_path).read_text().strip()
        except OSError as e:
            raise SecretsConfigError(f"cannot read the secrets token file {token_path}: "
                                     f"{e.strerror} (--secrets-token-file / "
                                     "AEGIS_SECRETS_TOKEN_FILE)") from None
        if not token or any(c.isspace() for c in token):
            raise SecretsConfigError(f"the secrets token file {token_path} holds no token "
                                     "(one line: the controller's token the aegis.fleet.vault "
                                     "role wrote)")
        mount = approle_mount or _env("AEGIS_SECRETS_APPROLE_MOUNT") or DEFAULT_APPROLE_MOUNT
        if not re.match(MOUNT, mount):
            raise SecretsConfigError(f"bad AppRole mount {mount!r} (--secrets-approle-mount): "
                                     "lower-case letters, digits, '.', '_', '-', no slash at "
                                     "either end")
        prefix = prefix or _env("AEGIS_SECRETS_PREFIX") or DEFAULT_PREFIX
        if not re.match(NAME, f"{prefix}-x"):
            raise SecretsConfigError(f"bad name prefix {prefix!r} (--secrets-prefix): "
                                     "lower-case letters, digits, '.', '_', '-'")
        ttl = cls._wrap_ttl(wrap_ttl if wrap_ttl is not None
                            else _env("AEGIS_SECRETS_WRAP_TTL") or MAX_WRAP_TTL)
        ca = ca_file or _env(*CA_ENV)
        if ca:
            try:
                ssl.create_default_context(cafile=ca)
            except (OSError, ssl.SSLError) as e:
                raise SecretsConfigError(f"cannot load the vault CA {ca}: {e}") from None
        dsn = verify_dsn or _env("AEGIS_SECRETS_VERIFY_DSN") or None
        return cls(addr.rstrip("/"), token, Path(token_path), Path(ca) if ca else None,
                   mount, prefix, ttl, dsn)

    @staticmethod
    def _wrap_ttl(value: int | str) -> int:
        try:
            ttl = int(value)
        except ValueError:
            raise SecretsConfigError(f"wrap TTL {value!r} is not a whole number of seconds "
                                     "(--secrets-wrap-ttl / AEGIS_SECRETS_WRAP_TTL)") from None
        if not 1 <= ttl <= MAX_WRAP_TTL:
            raise SecretsConfigError(f"wrap TTL {ttl} s is out of range: 1 to {MAX_WRAP_TTL} s "
                                     "(a wrapping token lives only as long as the order takes "
                                     "to reach the node)")
        return ttl

    def approle(self, role: str) -> str:
        """The AppRole name of node role ``role``."""
        return f"{self.prefix}-{role}"

    def creation_path(self, role: str) -> str:
        """Where the node's wrapped secret_id is made (its wrapping token's creation_path)."""
        return secret_id_path(self.approle_mount, self.approle(role))


def add_options(parser: argparse.ArgumentParser) -> None:
    """The gate's command-line options (``aegis-controller serve``)."""
    g = parser.add_argument_group(
        "leased secrets", "a trusted node with a secrets role gets a response-wrapped "
        "AppRole secret_id; its secrets are revoked when it is quarantined or leaves trusted "
        "(off without a token file)")
    g.add_argument("--secrets-token-file", metavar="FILE", help="the controller's narrow "
                   "Vault token (the vault role's vault_controller_token_file; else "
                   "$AEGIS_SECRETS_TOKEN_FILE)")
    g.add_argument("--vault-addr", metavar="URL", help="the Vault-compatible server (else "
                   "AEGIS_VAULT_ADDR, BAO_ADDR, VAULT_ADDR)")
    g.add_argument("--vault-ca", metavar="FILE", help="CA bundle for an https address (else "
                   "BAO_CACERT, VAULT_CACERT)")
    g.add_argument("--secrets-approle-mount", metavar="PATH", help="AppRole auth mount (else "
                   f"$AEGIS_SECRETS_APPROLE_MOUNT, default {DEFAULT_APPROLE_MOUNT})")
    g.add_argument("--secrets-prefix", metavar="P", help="name prefix: node role R's AppRole "
                   f"is P-R (else $AEGIS_SECRETS_PREFIX, default {DEFAULT_PREFIX})")
    g.add_argument("--secrets-wrap-ttl", metavar="S", help="wrapping token TTL in seconds, "
                   f"1 to {MAX_WRAP_TTL} (else $AEGIS_SECRETS_WRAP_TTL, default "
                   f"{MAX_WRAP_TTL})")
    g.add_argument("--secrets-verify-dsn", metavar="DSN", help="PostgreSQL DSN used only to "
                   "verify revoked logins are gone from pg_roles (else "
                   "$AEGIS_SECRETS_VERIFY_DSN; unset: not verified)")
