"""The SSH user CA: OpenBao's (or Vault's) SSH secrets engine signs the public key a user
sent with an access request to a service of kind ``ssh``, for the user's principal, valid
for the grant's window. The controller calls only ``<mount>/sign/<role>`` with its own
token (the role needs ``allow_user_certificates``, ``allow_user_key_ids`` and the users
it may sign for, e.g. ``allowed_users=*``: the access policy decides who).

The answer is checked before it is handed out: a user certificate for exactly that
principal and key id, over the key the user sent, whose validity ends at the grant's
end (the engine backdates the start by its ``not_before_duration`` for clock skew).

Configuration (``aegis-controller serve``): ``--ssh-ca-mount`` / ``AEGIS_SSH_CA_MOUNT``
(without it, requests for ``ssh`` services are refused), ``--ssh-ca-role`` /
``AEGIS_SSH_CA_ROLE`` (default ``aegis-access``), the token file ``--ssh-ca-token-file`` /
``AEGIS_SSH_CA_TOKEN_FILE`` (default: the secrets token file), the server address and CA
as for the secrets gate (``--vault-addr``, ``--vault-ca``).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    SSHCertificate,
    SSHCertificateType,
    load_ssh_public_identity,
    load_ssh_public_key,
)

from aegis_protocol.urls import checked_url

from ..secrets.vault import VaultCallError, VaultClient
from ..vault_wrap import ADDR_ENV, CA_ENV, first_env

DEFAULT_ROLE = "aegis-access"
_PATH = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}(/[A-Za-z0-9][A-Za-z0-9._-]{0,63})*$")
#: What an SSH principal (a login name sshd compares) may be.
PRINCIPAL = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._@-]{0,63}$")


class SshCaError(RuntimeError):
    """The CA is misconfigured or refused; the message names the setting or call."""


@dataclass(frozen=True)
class SshCaSettings:
    addr: str
    token: str = field(repr=False)
    mount: str
    role: str = DEFAULT_ROLE
    ca_file: Path | None = None

    @classmethod
    def resolve(cls, *, mount: str | None = None, role: str | None = None,
                token_file: str | None = None, addr: str | None = None,
                ca_file: str | None = None, secrets_token_file: str | None = None
                ) -> SshCaSettings | None:
        """The settings, or None without a mount (SSH certificates off)."""
        mount = mount or first_env("AEGIS_SSH_CA_MOUNT")
        if not mount:
            return None
        role = role or first_env("AEGIS_SSH_CA_ROLE") or DEFAULT_ROLE
        for what, value in (("--ssh-ca-mount", mount), ("--ssh-ca-role", role)):
            if not _PATH.match(value):
                raise SshCaError(f"{what} {value!r}: a Vault path of letters, digits, '.', "
                                 "'_' and '-' (no leading or trailing '/')")
        token_path = (token_file or first_env("AEGIS_SSH_CA_TOKEN_FILE")
                      or secrets_token_file or first_env("AEGIS_SECRETS_TOKEN_FILE"))
        if not token_path:
            raise SshCaError("--ssh-ca-mount is set but no token file: pass "
                             "--ssh-ca-token-file (or --secrets-token-file) with the token "
                             f"allowed to update {mount}/sign/{role}")
        addr = addr or first_env(*ADDR_ENV)
        if not addr:
            raise SshCaError("--ssh-ca-mount is set but no Vault address: pass --vault-addr "
                             "or set AEGIS_VAULT_ADDR (or BAO_ADDR, VAULT_ADDR)")
        try:
            checked_url(addr, "the vault address")
            token = Path(token_path).read_text().strip()
        except ValueError as e:
            raise SshCaError(str(e)) from None
        except OSError as e:
            raise SshCaError(f"cannot read the SSH CA token file {token_path}: "
                             f"{e.strerror} (--ssh-ca-token-file)") from None
        if not token or any(c.isspace() for c in token):
            raise SshCaError(f"the SSH CA token file {token_path} holds no token (one line)")
        ca = ca_file or first_env(*CA_ENV)
        return cls(addr=addr, token=token, mount=mount, role=role,
                   ca_file=Path(ca) if ca else None)


@dataclass(frozen=True)
class UserCertificate:
    """A signed user certificate and what sshd will read from it."""

    certificate: str  # the OpenSSH one-line form: the user's -cert.pub file
    serial: str  # decimal (unsigned 64-bit)
    key_id: str
    principal: str
    valid_after: int
    valid_before: int

    def ledger(self) -> dict[str, str | int]:
        return {"serial": self.serial, "key_id": self.key_id, "principal": self.principal,
                "valid_after": self.valid_after, "valid_before": self.valid_before}


def check_public_key(text: str) -> str:
    """The user's OpenSSH public key line (``ssh-ed25519 AAAA... comment``), normalised
    to type and key; ValueError naming ``ssh_public_key`` otherwise."""
    line = text.strip()
    if "\n" in line or "-cert-v01@openssh.com" in line.split(" ", 1)[0]:
        raise ValueError("ssh_public_key: one public key line (your id_ed25519.pub), not a "
                         "certificate or several keys")
    try:
        key = load_ssh_public_key(line.encode())
    except (ValueError, TypeError) as e:
        raise ValueError(f"ssh_public_key: not an OpenSSH public key ({e}); send the one "
                         "line of your id_ed25519.pub") from None
    return key.public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()


class SshCa(VaultClient):
    def __init__(self, settings: SshCaSettings) -> None:
        super().__init__(settings.addr, settings.token, settings.ca_file)
        self.settings = settings

    def sign(self, public_key: str, principal: str, key_id: str, valid_before: int
             ) -> UserCertificate:
        """Have the CA sign ``public_key`` for ``principal`` until ``valid_before`` (a
        Unix time: the grant's end)."""
        ttl = valid_before - int(time.time())
        if ttl < 1:
            raise SshCaError(f"the grant ends at {valid_before}, already past: nothing signed")
        path = f"{self.settings.mount}/sign/{self.settings.role}"
        try:
            doc = self._call("POST", path, f"sign an SSH user certificate at {path}", {
                "public_key": public_key, "valid_principals": principal, "key_id": key_id,
                "cert_type": "user", "ttl": f"{ttl}s",
                "extensions": {"permit-pty": "", "permit-port-forwarding": ""}})
        except VaultCallError as e:
            raise SshCaError(f"{e} — is the SSH secrets engine mounted at "
                             f"{self.settings.mount} with a role {self.settings.role!r} "
                             "(allow_user_certificates, allow_user_key_ids, allowed_users "
                             "covering the principal, max_ttl at least the longest grant) "
                             "that the controller's token may update?") from None
        signed = str((doc.get("data") or {}).get("signed_key") or "").strip()
        return self._checked(signed, public_key, principal, key_id, valid_before)

    def _checked(self, signed: str, public_key: str, principal: str, key_id: str,
                 valid_before: int) -> UserCertificate:
        try:
            cert = load_ssh_public_identity(signed.encode())
        except (ValueError, TypeError, UnsupportedAlgorithm) as e:
            raise SshCaError(f"the SSH CA at {self.addr} answered with no certificate "
                             f"({e})") from None
        problems = []
        if not isinstance(cert, SSHCertificate) or cert.type != SSHCertificateType.USER:
            raise SshCaError(f"the SSH CA at {self.addr} did not return a user certificate")
        own = cert.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()
        if own != public_key:
            problems.append("it certifies another key")
        if [p.decode() for p in cert.valid_principals] != [principal]:
            problems.append(f"principals {cert.valid_principals!r}, not [{principal!r}]")
        if cert.key_id.decode() != key_id:
            problems.append(f"key id {cert.key_id!r}, not {key_id!r} (allow_user_key_ids "
                            "on the role?)")
        if abs(cert.valid_before - valid_before) > 5:
            problems.append(f"valid until {cert.valid_before}, not the grant's end "
                            f"{valid_before} (the role's max_ttl shorter than the grant?)")
        if problems:
            raise SshCaError(f"the SSH CA at {self.addr} signed a certificate the grant "
                             f"cannot use: {'; '.join(problems)}")
        return UserCertificate(certificate=signed, serial=str(cert.serial), key_id=key_id,
                               principal=principal, valid_after=cert.valid_after,
                               valid_before=cert.valid_before)
