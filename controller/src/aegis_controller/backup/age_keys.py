"""The operators' age keys: recipients to encrypt to, identities to decrypt with, and a new
key pair (``aegis-controller backup-identity``)."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyrage

from .format import BackupError


def _lines(path: Path, what: str) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise BackupError(f"cannot read {what} {path}: {err}") from None
    return [s for s in (line.strip() for line in text.splitlines()) if s and s[0] != "#"]


def recipients(values: Sequence[str], files: Sequence[Path]) -> list[Any]:
    """The age recipients from ``--recipient`` values and ``--recipients-file`` lines:
    ``age1...`` (X25519) or an SSH public key (``ssh-ed25519 ...``, ``ssh-rsa ...``)."""
    texts = list(values) + [line for f in files for line in _lines(f, "recipients file")]
    if not texts:
        raise BackupError("no recipients: pass --recipient age1... (repeatable) or "
                          "--recipients-file FILE (one age or SSH public key a line); make "
                          "a key pair with `aegis-controller backup identity --out FILE`")
    found = []
    for text in texts:
        try:
            if text.startswith("age1"):
                found.append(pyrage.x25519.Recipient.from_str(text))
            elif text.startswith("ssh-"):
                found.append(pyrage.ssh.Recipient.from_str(text))
            else:
                raise ValueError("neither age1... nor ssh-...")
        except (ValueError, pyrage.RecipientError) as err:
            raise BackupError(f"recipient {text[:24]!r}... is not an age (age1...) or SSH "
                              f"public key ({err})") from None
    return found


def identities(path: Path) -> list[Any]:
    """The age identities (``AGE-SECRET-KEY-1...`` lines) or the SSH private key in
    ``path``."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise BackupError(f"cannot read identity file {path}: {err.strerror}") from None
    if b"-----BEGIN" in raw:
        try:
            return [pyrage.ssh.Identity.from_buffer(raw)]
        except (ValueError, pyrage.IdentityError) as err:
            raise BackupError(f"identity file {path} is not a usable SSH private key "
                              f"({err}); an encrypted SSH key is not supported") from None
    keys = [line for line in _lines(path, "identity file") if line.startswith("AGE-SECRET-KEY-")]
    if not keys:
        raise BackupError(f"identity file {path} holds no AGE-SECRET-KEY-1... line: pass the "
                          "file `aegis-controller backup identity` (or age-keygen) wrote")
    try:
        return [pyrage.x25519.Identity.from_str(k) for k in keys]
    except (ValueError, pyrage.IdentityError) as err:
        raise BackupError(f"identity file {path}: a malformed age secret key ({err})") from None


def new_identity(out: Path) -> str:
    """Write a fresh age identity to ``out`` (0600, refusing to replace one); return its
    recipient."""
    identity = pyrage.x25519.Identity.generate()
    recipient = str(identity.to_public())
    text = (f"# created: {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}\n"
            f"# public key: {recipient}\n{identity}\n")
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise BackupError(f"{out} exists: choose another file (an identity is never "
                          "overwritten: archives encrypted to it would be lost)") from None
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return recipient


