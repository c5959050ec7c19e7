"""sshd's revocation list of user certificates (``RevokedKeys``, an OpenSSH KRL), kept by
the agent: a signed ``revoke-ssh-cert`` order names a certificate (serial and key id) of
an access grant that ended before the certificate did. OpenBao cannot revoke the SSH
certificates it signs (hashicorp/vault#3377); sshd reads the KRL on each authentication,
so the certificate is refused from the next login on.

The revoked certificates are kept as a KRL specification (``ssh-keygen(1)``, "KEY
REVOCATION LISTS") in ``spec_file``; each change appends to it and rebuilds the whole KRL
with ``ssh-keygen -k -f TMP -s CA.pub SPEC`` next to ``file``, renamed over it, so sshd
never reads a half-written list. An order for a certificate already listed changes
nothing.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time

from aegis_protocol.commands import RevokeSshCert, parse
from aegis_protocol.files import fsync_dir, write_atomically

from .config import SshKrlConfig

log = logging.getLogger("aegis.agent.revoked_keys")
TIMEOUT = 30


class KrlError(RuntimeError):
    """The KRL could not be written; the message says which file and why."""


class RevokedKeys:
    def __init__(self, cfg: SshKrlConfig) -> None:
        self.cfg = cfg

    def listed(self) -> set[str]:
        """The serials of the certificates in the specification."""
        try:
            lines = self.cfg.spec_file.read_text().splitlines()
        except FileNotFoundError:
            return set()
        return {x.split(":", 1)[1].strip() for x in lines if x.startswith("serial:")}

    def revoke(self, args: dict) -> str:
        """The ``revoke-ssh-cert`` order; returns the acknowledgment's detail."""
        order: RevokeSshCert = parse("revoke-ssh-cert", args)
        if not self.cfg.ca_public_key.is_file():
            raise KrlError(f"no user CA public key at {self.cfg.ca_public_key} (ssh_krl."
                           "ca_public_key; the aegis.fleet.harden role writes it with "
                           "harden_ssh_user_ca_keys)")
        if order.serial in self.listed() and self.cfg.file.is_file():
            return f"certificate serial {order.serial} already in {self.cfg.file}"
        old = self.cfg.spec_file.read_text() if self.cfg.spec_file.is_file() else ""
        entry = (f"# {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}"
                 f" {order.reason or ''}".rstrip().replace("\n", " ")
                 + f"\nserial: {order.serial}\nid: {order.key_id}\n")
        spec = old + entry
        self.cfg.spec_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomically(self.cfg.spec_file, spec.encode(), mode=0o600)
        self.build()
        log.info("ssh certificate revoked", extra={"serial": order.serial,
                                                    "key_id": order.key_id,
                                                    "krl": str(self.cfg.file)})
        return f"certificate serial {order.serial} (key id {order.key_id}) in {self.cfg.file}"

    def build(self) -> None:
        """Make ``file`` from the specification (an empty KRL without one), atomically."""
        krl = self.cfg.file
        tmp = krl.with_name(f".{krl.name}.{os.getpid()}.tmp")
        cmd = ["ssh-keygen", "-q", "-k", "-f", str(tmp), "-s", str(self.cfg.ca_public_key)]
        if self.cfg.spec_file.is_file():
            cmd.append(str(self.cfg.spec_file))
        tmp.unlink(missing_ok=True)
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT,
                                 check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise KrlError(f"cannot run ssh-keygen to write {krl}: {e}") from None
        if out.returncode != 0 or not tmp.is_file():
            tmp.unlink(missing_ok=True)
            raise KrlError(f"ssh-keygen could not write the KRL {krl} from "
                           f"{self.cfg.spec_file}: {out.stderr.strip()[:300]}")
        tmp.chmod(0o644)
        os.replace(tmp, krl)
        fsync_dir(krl.parent)
