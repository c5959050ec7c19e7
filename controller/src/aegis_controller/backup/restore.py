"""Restore the controller's state from an archive :mod:`.writer` wrote.

In order, and nothing is written to the state directory or the database before the
first three pass:

1. decrypt with the operator's identity; read the manifest (its format must be
   :data:`.format.FORMAT`) and check every member against its sha256, refusing any member
   the manifest does not list (or lists and is missing);
2. check the target: the state directory empty or absent (``force`` moves a non-empty one
   aside to ``<dir>.before-restore-<time>``, so nothing is lost); a PostgreSQL target
   database without tables; the archive's database of the configured kind;
3. stage the files in a 0700 directory beside the state directory and verify the ledger
   with the project's verification (records, checkpoints, anchor, signed head) against
   the archive's ledger public key, or the one ``pinned_key`` names (an archive made by
   whoever knows a recipient would otherwise verify with its own key);
4. move the staged directory into place; on PostgreSQL ``pg_restore`` into the target in
   one transaction, verify there again, and empty the database again if that fails.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import shutil
import tarfile
from pathlib import Path, PurePosixPath
from typing import Any

import pyrage
from sqlalchemy import inspect, text

from aegis_protocol.files import fsync_dir, write_atomically

from .. import db
from ..ledger import Ledger, VerifyResult, head_path, load_verifier
from ..ledger.keys import PUBLIC_NAME
from ..settings import Settings
from . import pg_tools
from .format import (
    ANCHOR_MEMBER,
    FORMAT,
    HEAD_MEMBER,
    MANIFEST,
    PG_MEMBER,
    SQLITE_MEMBER,
    BackupError,
    LedgerRefused,
    kind_of,
    progress,
)


def decrypt(archive: Path, keys: list[Any]) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The manifest and members of ``archive``, decrypted and checked against it."""
    try:
        ciphertext = archive.read_bytes()
    except OSError as err:
        raise BackupError(f"cannot read archive {archive}: {err.strerror}") from None
    try:
        plaintext = pyrage.decrypt(ciphertext, keys)
    except pyrage.DecryptError as err:
        hint = ("it was not encrypted to this identity: pass the identity of one of the "
                "recipients the backup was made for" if "no matching" in str(err).lower()
                else "the file is not an age archive from `aegis-controller backup`, or it "
                     "is damaged")
        raise BackupError(f"cannot decrypt {archive} ({err}): {hint}") from None
    try:
        with tarfile.open(fileobj=io.BytesIO(plaintext), mode="r:gz") as tar:
            members = {}
            for info in tar.getmembers():
                if not info.isfile():
                    raise BackupError(f"archive {archive}: member {info.name!r} is not a "
                                      "regular file")
                handle = tar.extractfile(info)
                assert handle is not None
                members[info.name] = handle.read()
    except (tarfile.TarError, OSError, EOFError) as err:
        raise BackupError(f"archive {archive} decrypts but is not a gzip'd tar ({err}): "
                          "it is damaged or not from `aegis-controller backup`") from None
    return _check_manifest(archive, members), members


def _check_manifest(archive: Path, members: dict[str, bytes]) -> dict[str, Any]:
    try:
        manifest = json.loads(members[MANIFEST])
    except (KeyError, ValueError):
        raise BackupError(f"archive {archive} has no readable {MANIFEST}: it is not from "
                          "`aegis-controller backup`") from None
    if not isinstance(manifest, dict):
        raise BackupError(f"archive {archive}: its {MANIFEST} is not a JSON object")
    if manifest.get("format") != FORMAT:
        raise BackupError(f"archive {archive} has format {manifest.get('format')!r}; this "
                          f"controller restores {FORMAT!r} only: use the aegis-controller "
                          "version that made it (the manifest says "
                          f"{manifest.get('controller_version')!r})")
    listed = manifest.get("members")
    if not isinstance(listed, dict) or not all(isinstance(e, dict) for e in listed.values()):
        raise BackupError(f"archive {archive}: its {MANIFEST} lists no members")
    extra = sorted(set(members) - set(listed) - {MANIFEST})
    missing = sorted(set(listed) - set(members))
    if extra or missing:
        raise BackupError(f"archive {archive} does not match its manifest (unlisted: {extra}, "
                          f"missing: {missing}): it was altered")
    for name, entry in listed.items():
        parts = PurePosixPath(name).parts
        if PurePosixPath(name).is_absolute() or ".." in parts:
            raise BackupError(f"archive {archive}: member name {name!r} leaves the archive")
        if hashlib.sha256(members[name]).hexdigest() != entry.get("sha256"):
            raise BackupError(f"archive {archive}: member {name} does not match its sha256 in "
                              "the manifest: it was altered or damaged")
    return manifest


# -- the target ---------------------------------------------------------------------
def _inside(path: Path, state: Path) -> Path | None:
    try:
        return path.resolve().relative_to(state.resolve())
    except ValueError:
        return None


def _check_target(settings: Settings, kind: str, force: bool) -> None:
    state = settings.state_dir
    if kind_of(settings.db_url) != kind:
        raise BackupError(f"the archive holds a {kind} database but the configured one is "
                          f"{db.describe(settings.db_url)}: pass --db for a {kind} database")
    if state.exists() and not state.is_dir():
        raise BackupError(f"{state} exists and is not a directory")
    if state.is_dir() and any(state.iterdir()) and not force:
        raise BackupError(f"state directory {state} is not empty: restore into an empty or "
                          "absent directory, or pass --force (the current directory is then "
                          "kept as <dir>.before-restore-<time>)")
    sqlite = db.sqlite_path(settings.db_url)
    if kind == "sqlite" and (sqlite is None or _inside(sqlite, state) is None):
        raise BackupError(f"the SQLite database {sqlite} is outside the state directory "
                          f"{state}: restore with the default --db (<state>/controller.db)")
    for path in (settings.anchor_path, head_path(settings.anchor_path)):
        if _inside(path, state) is None and path.exists() and not force:
            raise BackupError(f"{path} exists: move it away or pass --force (it is then kept "
                              "as <file>.before-restore-<time>)")
    if kind == "postgresql":
        engine = db.open_engine(settings.db_url)
        try:
            with db.errors(engine), engine.connect() as conn:
                tables = inspect(conn).get_table_names()
        finally:
            engine.dispose()
        if tables:
            raise BackupError(f"{db.describe(settings.db_url)} is not empty ({len(tables)} "
                              "tables): restore into an empty database (CREATE DATABASE ...)")


# -- staging and verification --------------------------------------------------------
def _stage(settings: Settings, manifest: dict[str, Any], members: dict[str, bytes],
           staging: Path, kind: str) -> Path:
    """Write the state files into ``staging``; return where the anchor went."""
    listed = manifest["members"]
    for name in listed:
        if not name.startswith("state/"):
            continue
        path = staging / PurePosixPath(name).relative_to("state")
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # 0600 whatever the archive says: keys stay private (the controller makes every
        # file under umask 077 anyway)
        write_atomically(path, members[name], mode=0o600)
    if kind == "sqlite":
        inside = _inside(db.sqlite_path(settings.db_url) or Path(), settings.state_dir)
        assert inside is not None  # _check_target made sure
        write_atomically(staging / inside, members[SQLITE_MEMBER], mode=0o600)
    inside = _inside(settings.anchor_path, settings.state_dir)
    anchor = staging / (inside or Path(".restore-marks") / "ledger.anchor.json")
    anchor.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    for member, path in ((ANCHOR_MEMBER, anchor), (HEAD_MEMBER, head_path(anchor))):
        if member in members:
            write_atomically(path, members[member], mode=0o644)
    return anchor


def _verify(url: str, anchor: Path, public_key: Path) -> VerifyResult:
    engine = db.open_engine(url, must_exist=True)
    try:
        return Ledger(engine, anchor_path=anchor).verify(load_verifier(public_key))
    finally:
        engine.dispose()


def _refuse(result: VerifyResult, where: str) -> LedgerRefused:
    at = f" at seq {result.first_bad_seq}" if result.first_bad_seq else ""
    return LedgerRefused(f"the archive's ledger does not verify{at}: {result.problem}: "
                         f"{result.detail}; {where}")


def _pinned(staging: Path, pinned_key: Path | None) -> Path:
    archived = staging / "keys" / PUBLIC_NAME
    if not archived.is_file():
        raise BackupError(f"the archive holds no keys/{PUBLIC_NAME}: it cannot be verified")
    if pinned_key is not None:
        if load_verifier(pinned_key).key_id != load_verifier(archived).key_id:
            raise LedgerRefused(f"the archive's ledger key {load_verifier(archived).key_id} "
                                f"is not the one in {pinned_key} "
                                f"({load_verifier(pinned_key).key_id}): refusing it")
        return pinned_key
    return archived


def _aside(path: Path, stamp: str) -> Path | None:
    if not path.exists():
        return None
    kept = path.with_name(f"{path.name}.before-restore-{stamp}")
    os.rename(path, kept)
    return kept


def _empty_database(url: str) -> None:
    engine = db.open_engine(url)
    try:
        with db.errors(engine), engine.begin() as conn:
            for table in inspect(conn).get_table_names():
                conn.execute(text(f'DROP TABLE IF EXISTS "{table}" CASCADE'))
    finally:
        engine.dispose()


def _load_and_verify(settings: Settings, members: dict[str, bytes], staging: Path,
                     kind: str, anchor: Path, public: Path) -> VerifyResult:
    """Verify the staged ledger (SQLite), or load the dump and verify it there (PostgreSQL;
    the database is emptied again when it does not verify)."""
    if kind == "sqlite":
        progress("verifying the archive's ledger (records, checkpoints, anchor, head)")
        inside = _inside(db.sqlite_path(settings.db_url) or Path(), settings.state_dir)
        result = _verify(f"sqlite:///{staging / (inside or Path())}", anchor, public)
        if not result.ok:
            raise _refuse(result, "nothing was restored")
        return result
    progress(f"loading the dump into {db.describe(settings.db_url)} (pg_restore)")
    dump = staging / ".restore-marks" / "controller.pgdump"
    dump.parent.mkdir(exist_ok=True, mode=0o700)
    write_atomically(dump, members[PG_MEMBER], mode=0o600)
    try:
        pg_tools.restore(settings.db_url, dump)
    except pg_tools.PgToolError as err:
        raise BackupError(f"{err}; the database was left as it was") from None
    finally:
        dump.unlink(missing_ok=True)
    progress("verifying the restored ledger (records, checkpoints, anchor, head)")
    result = _verify(settings.db_url, anchor, public)
    if not result.ok:
        _empty_database(settings.db_url)
        raise _refuse(result, "the database was emptied again and nothing else was restored")
    return result


def _move_into_place(settings: Settings, staging: Path, anchor: Path, stamp: str) -> list[str]:
    """The staged directory becomes the state directory (and an anchor kept outside it goes
    to its place); returns what was moved aside."""
    kept: list[str] = []
    state = settings.state_dir.absolute()
    if _inside(settings.anchor_path, settings.state_dir) is None:
        for path, staged in ((settings.anchor_path, anchor),
                             (head_path(settings.anchor_path), head_path(anchor))):
            if staged.exists():
                if (old := _aside(path, stamp)) is not None:
                    kept.append(str(old))
                path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                write_atomically(path, staged.read_bytes())
    shutil.rmtree(staging / ".restore-marks", ignore_errors=True)
    if state.is_dir() and not any(state.iterdir()):
        state.rmdir()
    elif (old := _aside(state, stamp)) is not None:
        kept.append(str(old))
    os.rename(staging, state)
    fsync_dir(state.parent)
    return kept


def restore(settings: Settings, archive: Path, keys: list[Any], *, force: bool = False,
            pinned_key: Path | None = None) -> dict[str, Any]:
    """Restore ``archive`` into ``settings``' state directory and database."""
    progress(f"decrypting {archive} and checking its manifest")
    manifest, members = decrypt(archive, keys)
    kind = str(manifest.get("database"))
    if kind not in ("sqlite", "postgresql") or \
            (SQLITE_MEMBER if kind == "sqlite" else PG_MEMBER) not in members:
        raise BackupError(f"archive {archive}: no database of a known kind ({kind!r})")
    _check_target(settings, kind, force)
    state = settings.state_dir.absolute()
    state.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    staging = state.parent / f".{state.name}.restore-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(mode=0o700)
    try:
        anchor = _stage(settings, manifest, members, staging, kind)
        result = _load_and_verify(settings, members, staging, kind, anchor,
                                  _pinned(staging, pinned_key))
        progress(f"moving the restored state into {state}")
        kept = _move_into_place(settings, staging, anchor,
                                dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ"))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"state_dir": str(state), "database": db.describe(settings.db_url),
            "records": result.count, "head": result.head, "key_id": result.key_id,
            "created": manifest.get("created"), "kept": kept}
