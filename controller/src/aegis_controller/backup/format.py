"""The archive's format (see the package's doc), the errors of backup and restore, and
what both sides share."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy.engine import make_url

FORMAT = "aegis-controller-backup/1"
#: Directories of the state directory that go into the archive (keys and certificates).
STATE_DIRS = ("keys", "ca", "tls")
MANIFEST = "manifest.json"
SQLITE_MEMBER = "database/controller.db"
PG_MEMBER = "database/controller.pgdump"
ANCHOR_MEMBER = "ledger/anchor.json"
HEAD_MEMBER = "ledger/head.json"


class BackupError(Exception):
    """Bad input or an unusable archive; the message names what to fix (exit 2)."""


class LedgerRefused(BackupError):
    """The ledger (live or in the archive) does not verify (exit 1)."""


def progress(step: str) -> None:
    print(f"aegis-controller: {step}", file=sys.stderr, flush=True)


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
