"""Write the archive: the copy of the database and its marks (:mod:`.snapshot`), the key
and certificate files, a manifest; packed in memory, encrypted to the recipients, written
0600 atomically."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import tarfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyrage

from aegis_protocol.files import fsync_dir

from .. import __version__
from ..ledger import load_verifier
from ..settings import Settings
from . import format as layout
from . import snapshot
from .format import BackupError, kind_of, private_dir, progress


def _add(tar: tarfile.TarFile, name: str, data: bytes, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, int(time.time())
    tar.addfile(info, io.BytesIO(data))


def _state_files(state_dir: Path) -> Iterator[tuple[str, Path]]:
    for top in layout.STATE_DIRS:
        base = state_dir / top
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*")):
            if path.is_file() and not path.is_symlink() and not path.name.startswith("."):
                yield f"state/{path.relative_to(state_dir)}", path


def build(settings: Settings, work: Path) -> tuple[bytes, dict[str, Any]]:
    """The plaintext archive (gzip'd tar) and its manifest."""
    kind = kind_of(settings.db_url)
    if not settings.private_key.is_file():
        raise BackupError(f"no ledger key at {settings.private_key}: is --state-dir "
                          f"{settings.state_dir} the controller's state directory?")
    progress(f"copying the {kind} database and the ledger marks")
    copy, (anchor, head) = snapshot.snapshot(settings, work, kind)
    body: list[tuple[str, bytes, int]] = [
        (layout.SQLITE_MEMBER if kind == "sqlite" else layout.PG_MEMBER, copy.read_bytes(),
         0o600)]
    for name, path in _state_files(settings.state_dir):
        body.append((name, path.read_bytes(), path.stat().st_mode & 0o777))
    for name, data in ((layout.ANCHOR_MEMBER, anchor), (layout.HEAD_MEMBER, head)):
        if data is not None:
            body.append((name, data, 0o644))
    verifier = load_verifier(settings.public_key)
    manifest: dict[str, Any] = {
        "format": layout.FORMAT, "controller_version": __version__,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "database": kind, "ledger_key_id": verifier.key_id,
        "members": {name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
                           "mode": mode} for name, data, mode in body}}
    buffer = io.BytesIO()
    progress("packing the database, keys, certificates, anchor and signed head")
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        _add(tar, layout.MANIFEST, json.dumps(manifest, indent=2).encode() + b"\n", 0o600)
        for name, data, mode in body:
            _add(tar, name, data, mode)
    return buffer.getvalue(), manifest


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise BackupError(f"{out} exists: choose another file or pass --force to replace it")
    if not out.parent.is_dir():
        raise BackupError(f"directory {out.parent} does not exist: create it first")


def write_encrypted(out: Path, plaintext: bytes, to: Sequence[Any]) -> None:
    """Encrypt ``plaintext`` to ``to`` into ``out`` (0600), atomically."""
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            try:
                pyrage.encrypt_io(io.BytesIO(plaintext), f, list(to))
            except pyrage.EncryptError as err:
                raise BackupError(f"cannot encrypt the archive: {err}") from None
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(out.parent)


def backup(settings: Settings, out: Path, to: Sequence[Any], *, force: bool = False
           ) -> dict[str, Any]:
    """Write the encrypted archive of ``settings``' state to ``out``; return its manifest."""
    if not settings.state_dir.is_dir():
        raise BackupError(f"state directory {settings.state_dir} does not exist: pass the "
                          "controller's --state-dir")
    _check_out(out, force)
    with private_dir(settings.state_dir, "backup") as work:
        plaintext, manifest = build(settings, work)
    progress(f"encrypting to {len(to)} recipient(s) into {out}")
    write_encrypted(out, plaintext, to)
    return manifest
