"""Encrypted backups of the controller's state: one age-encrypted archive (``pyrage``)
holding the database, the keys and the ledger's anchor and signed head.

The archive, once decrypted, is a gzip'd tar:

* ``manifest.json`` (first): ``format`` (:data:`FORMAT`), ``controller_version``,
  ``created``, the database ``kind`` (``sqlite`` or ``postgresql``), the ledger head and
  key id at backup time, and each other member's ``sha256``, ``size`` and ``mode``;
* ``database/controller.db`` (an SQLite online backup, consistent while the controller
  runs) or ``database/controller.pgdump`` (``pg_dump`` custom format);
* ``state/keys/...``, ``state/ca/...``, ``state/tls/...``: the ledger, order, CA and TLS
  keys and certificates (:data:`STATE_DIRS`), with their modes;
* ``ledger/anchor.json`` and ``ledger/head.json`` when they exist.

The plaintext tar exists only in memory; the SQLite or ``pg_dump`` copy is made in a
0700 directory inside the state directory, removed when the backup ends. The anchor and
head are read before the database is copied and again after: when a seal moved them
meanwhile the copy is made again, so the archive's marks always name records it holds.
The ledger must verify (a backup of a ledger that does not is refused: its restore would
be). :mod:`.restore` is the other half.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import io
import json
import os
import shutil
import sqlite3
import sys
import tarfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyrage
from sqlalchemy.engine import make_url

from aegis_protocol.files import fsync_dir

from . import __version__, db, pg_tools
from .ledger import Ledger, head_path, load_verifier, open_ledger
from .settings import Settings

FORMAT = "aegis-controller-backup/1"
#: Directories of the state directory that go into the archive (keys and certificates).
STATE_DIRS = ("keys", "ca", "tls")
MANIFEST = "manifest.json"
SQLITE_MEMBER = "database/controller.db"
PG_MEMBER = "database/controller.pgdump"
ANCHOR_MEMBER = "ledger/anchor.json"
HEAD_MEMBER = "ledger/head.json"
#: Copies of the database made before the anchor and head stopped moving.
ATTEMPTS = 5


class BackupError(Exception):
    """Bad input or an unusable archive; the message names what to fix (exit 2)."""


class LedgerRefused(BackupError):
    """The ledger (live or in the archive) does not verify (exit 1)."""


def progress(step: str) -> None:
    print(f"aegis-controller: {step}", file=sys.stderr, flush=True)


# -- age recipients and identities ------------------------------------------------------
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


# -- building the archive ---------------------------------------------------------------
def kind_of(url: str) -> str:
    backend = make_url(url).get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise BackupError(f"cannot back up a {backend} database: only SQLite and PostgreSQL")
    return backend


@contextlib.contextmanager
def private_dir(state_dir: Path, what: str) -> Iterator[Path]:
    """A 0700 scratch directory inside ``state_dir`` (so plaintext never leaves it),
    removed when the block ends."""
    path = state_dir / f".{what}-{os.getpid()}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(mode=0o700)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _marks(settings: Settings) -> tuple[bytes | None, bytes | None]:
    return _read_or_none(settings.anchor_path), _read_or_none(head_path(settings.anchor_path))


def _copy_sqlite(source: Path, out: Path) -> None:
    if not source.is_file():
        raise BackupError(f"no database file at {source}: check --state-dir / --db")
    src = sqlite3.connect(f"file:{source}?mode=rw", uri=True, timeout=db.LOCK_TIMEOUT)
    dst = sqlite3.connect(out)
    try:
        src.backup(dst)
    except sqlite3.Error as err:
        raise BackupError(f"database file {source}: SQLite online backup failed ({err})") \
            from None
    finally:
        dst.close()
        src.close()


def _verify_copy(copy: Path, marks: tuple[bytes | None, bytes | None], work: Path,
                 settings: Settings) -> None:
    """The project's ledger verification on the copy, with the marks read for it."""
    anchor = work / "anchor" / "ledger.anchor.json"
    anchor.parent.mkdir(mode=0o700)
    try:
        for path, data in ((anchor, marks[0]), (head_path(anchor), marks[1])):
            if data is not None:
                path.write_bytes(data)
        engine = db.open_engine(f"sqlite:///{copy}", must_exist=True)
        try:
            result = Ledger(engine, anchor_path=anchor).verify(
                load_verifier(settings.public_key))
        finally:
            engine.dispose()
    finally:
        shutil.rmtree(anchor.parent, ignore_errors=True)
    if not result.ok:
        raise LedgerRefused(f"the ledger does not verify ({result.problem} at seq "
                            f"{result.first_bad_seq}: {result.detail}): no backup written; "
                            "run `aegis-controller ledger verify` and fix it first")
    for leftover in (copy.with_name(copy.name + "-wal"), copy.with_name(copy.name + "-shm")):
        leftover.unlink(missing_ok=True)


def _snapshot(settings: Settings, work: Path, kind: str
              ) -> tuple[Path, tuple[bytes | None, bytes | None]]:
    """A consistent copy of the database and the anchor and head that go with it."""
    if kind == "postgresql":
        live = open_ledger(settings, write=False)
        try:
            result = live.verify(load_verifier(settings.public_key))
        finally:
            live.engine.dispose()
        if not result.ok:
            raise LedgerRefused(f"the ledger does not verify ({result.problem} at seq "
                                f"{result.first_bad_seq}: {result.detail}): no backup written")
    for _attempt in range(ATTEMPTS):
        before = _marks(settings)
        if kind == "sqlite":
            copy = work / "controller.db"
            copy.unlink(missing_ok=True)
            _copy_sqlite(db.sqlite_path(settings.db_url) or Path(), copy)
        else:
            copy = work / "controller.pgdump"
            try:
                pg_tools.dump(settings.db_url, copy)
            except pg_tools.PgToolError as err:
                raise BackupError(str(err)) from None
        if _marks(settings) == before:
            if kind == "sqlite":
                _verify_copy(copy, before, work, settings)
            return copy, before
        time.sleep(0.2)  # a seal moved the anchor while we copied: copy again
    raise BackupError(f"the ledger anchor kept moving during {ATTEMPTS} copies of the "
                      "database: try again")


def _add(tar: tarfile.TarFile, name: str, data: bytes, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, int(time.time())
    tar.addfile(info, io.BytesIO(data))


def _state_files(state_dir: Path) -> Iterator[tuple[str, Path]]:
    for top in STATE_DIRS:
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
    copy, (anchor, head) = _snapshot(settings, work, kind)
    body: list[tuple[str, bytes, int]] = [
        (SQLITE_MEMBER if kind == "sqlite" else PG_MEMBER, copy.read_bytes(), 0o600)]
    for name, path in _state_files(settings.state_dir):
        body.append((name, path.read_bytes(), path.stat().st_mode & 0o777))
    for name, data in ((ANCHOR_MEMBER, anchor), (HEAD_MEMBER, head)):
        if data is not None:
            body.append((name, data, 0o644))
    verifier = load_verifier(settings.public_key)
    manifest: dict[str, Any] = {
        "format": FORMAT, "controller_version": __version__,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "database": kind, "ledger_key_id": verifier.key_id,
        "members": {name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
                           "mode": mode} for name, data, mode in body}}
    buffer = io.BytesIO()
    progress("packing the database, keys, certificates, anchor and signed head")
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        _add(tar, MANIFEST, json.dumps(manifest, indent=2).encode() + b"\n", 0o600)
        for name, data, mode in body:
            _add(tar, name, data, mode)
    return buffer.getvalue(), manifest


def write_encrypted(out: Path, plaintext: bytes, to: Sequence[Any], *, force: bool) -> None:
    """Encrypt ``plaintext`` to ``to`` into ``out`` (0600), atomically."""
    if out.exists() and not force:
        raise BackupError(f"{out} exists: choose another file or pass --force to replace it")
    if not out.parent.is_dir():
        raise BackupError(f"directory {out.parent} does not exist: create it first")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            pyrage.encrypt_io(io.BytesIO(plaintext), f, list(to))
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
    with private_dir(settings.state_dir, "backup") as work:
        plaintext, manifest = build(settings, work)
    progress(f"encrypting to {len(to)} recipient(s) into {out}")
    write_encrypted(out, plaintext, to, force=force)
    return manifest
