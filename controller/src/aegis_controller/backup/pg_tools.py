"""PostgreSQL's own client programs for the controller's backups: ``pg_dump`` (custom
format) and ``pg_restore``, run with the database a SQLAlchemy URL names.

The binaries are Debian's versioned ones (``/usr/lib/postgresql/<major>/bin``, the
newest installed: ``pg_dump`` must not be older than the server), or
``$AEGIS_PG_BIN``. The password never goes on a command line: it is passed in
``PGPASSWORD``; the rest of the URL becomes libpq keywords.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from sqlalchemy.engine import make_url

from ..db import scrub

PG_ROOT = Path("/usr/lib/postgresql")


class PgToolError(Exception):
    """A PostgreSQL client program is missing or failed (the message says which and why)."""


def pg_bin(program: str) -> Path:
    """The newest installed ``program`` (``pg_dump``, ``pg_restore``)."""
    override = os.environ.get("AEGIS_PG_BIN")
    candidates = [Path(override)] if override else sorted(
        (p for p in PG_ROOT.glob("*/bin") if p.parent.name.isdigit()),
        key=lambda p: int(p.parent.name), reverse=True)
    for directory in candidates:
        if (directory / program).is_file():
            return directory / program
    raise PgToolError(f"no {program} under {override or PG_ROOT}: install PostgreSQL's "
                      "client programs (Debian: postgresql-client), or set AEGIS_PG_BIN to "
                      "the directory holding them")


def _conninfo(url: str) -> tuple[list[str], dict[str, str]]:
    """libpq ``--dbname`` keywords for ``url`` (no password) and the environment with it."""
    parsed = make_url(url)
    words = {"host": parsed.host, "port": parsed.port, "user": parsed.username,
             "dbname": parsed.database, **dict(parsed.query)}
    conninfo = " ".join(f"{k}={_quote(str(v))}" for k, v in words.items() if v)
    env = {**os.environ}
    if parsed.password:
        env["PGPASSWORD"] = str(parsed.password)
    return [f"--dbname={conninfo}"], env


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _run(program: str, args: list[str], url: str) -> None:
    dbname, env = _conninfo(url)
    cmd = [str(pg_bin(program)), *dbname, *args]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600,
                              check=False)
    except (OSError, subprocess.SubprocessError) as err:
        raise PgToolError(f"{program} could not run: {err}") from None
    if done.returncode != 0:
        lines = scrub(done.stderr.strip(), url).splitlines()
        raise PgToolError(f"{program} failed (exit {done.returncode}): "
                          f"{' / '.join(lines[-3:]) or 'no message'}")


def dump(url: str, out: Path, snapshot: str | None = None) -> None:
    """The whole database in ``pg_dump``'s custom format, owners and grants left out (the
    restore goes into whatever role the target URL names); ``snapshot``: as exported by
    ``pg_export_snapshot()`` in a transaction that stays open meanwhile."""
    args = ["--format=custom", "--no-owner", "--no-privileges", f"--file={out}"]
    _run("pg_dump", [*args, f"--snapshot={snapshot}"] if snapshot else args, url)


def restore(url: str, dump_file: Path) -> None:
    """Load ``dump_file`` into the (empty) database ``url`` names, all or nothing."""
    _run("pg_restore", ["--no-owner", "--no-privileges", "--single-transaction",
                        "--exit-on-error", str(dump_file)], url)
