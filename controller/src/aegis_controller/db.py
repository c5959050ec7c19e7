"""The controller's database: engine, shared table metadata and schema migrations.

One code path for SQLite (the default, a file under the controller's state dir) and
PostgreSQL (past one machine): everything goes through SQLAlchemy Core, and the only
dialect-specific lines are in this module, each guarded by the dialect's name.

* :func:`open_engine` makes an engine and turns driver failures into
  :class:`DatabaseError` naming the database and saying what to do.
* :func:`writer` opens the one kind of transaction that writes: on SQLite it is
  ``BEGIN IMMEDIATE`` (the write lock is taken up front, so two processes never both
  read the same head and then collide); on PostgreSQL a plain transaction, and the
  callers rely on unique keys plus a retry (or on a conditional ``UPDATE``).
  :func:`transaction` is the same inside :func:`errors`.
* :func:`upgrade` runs the Alembic migrations shipped in ``aegis_controller/migrations``
  up to head, serialised the same way, so several processes may start at once.

SQLite runs in WAL mode with ``synchronous=FULL``: a committed transaction is on disk
when ``commit`` returns, and readers (``ledger verify``) never block the writer.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, MetaData, create_engine, event, exc, text
from sqlalchemy.engine import URL, make_url

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"

#: Seconds a writer waits for another process's write lock before giving up (SQLite).
LOCK_TIMEOUT = 30.0

#: Key of the PostgreSQL advisory lock that serialises schema upgrades.
_PG_MIGRATION_LOCK = 0x41E6_15DB
#: Key of the PostgreSQL advisory lock that serialises ledger appends.
_PG_LEDGER_LOCK = 0x41E6_1ED6

#: All of the controller's tables register here (the ledger's, later nodes, orders...).
metadata = MetaData(naming_convention={
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "pk": "pk_%(table_name)s",
})


class DatabaseError(Exception):
    """The database cannot be opened, read or written; the message names it."""


class DatabaseBusy(DatabaseError):
    """Another writer held the lock too long: the request may be retried (HTTP 503)."""


def default_url(state_dir: Path) -> str:
    return f"sqlite:///{state_dir / 'controller.db'}"


#: ``scheme://user:PASSWORD@`` in text that does not parse as a URL.
_USERINFO = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")


def shown(url: str | URL) -> str:
    """``url`` fit to show in a message or log: its password replaced by ``***`` (also
    when it does not parse). Every place that shows a database URL goes through here."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (exc.ArgumentError, ValueError):
        text = str(url)
        if _USERINFO.search(text):
            return _USERINFO.sub(r"\1***@", text)
        return f"***@{text.rsplit('@', 1)[1]}" if "@" in text else text


def scrub(text: str, url: str | URL) -> str:
    """``text`` (an error message, say) with ``url``'s password, and any password written
    into a URL inside it, replaced by ``***``."""
    try:
        password = make_url(url).password
    except (exc.ArgumentError, ValueError):
        found = _USERINFO.search(str(url))
        password = str(url)[found.end(1):found.end() - 1] if found else None
    if password:
        text = text.replace(str(password), "***")
    return _USERINFO.sub(r"\1***@", text)


def describe(url: str | URL) -> str:
    """A name for the database fit for messages: the file of SQLite, else the URL sans password."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return f"database file {parsed.database or ':memory:'}"
    return f"database {shown(parsed)}"


def sqlite_path(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        return Path(parsed.database)
    return None


def open_engine(url: str, *, must_exist: bool = False) -> Engine:
    """An engine for ``url``; ``must_exist`` refuses a SQLite file that is not there yet
    (readers must not create an empty database and then report it as fine)."""
    try:
        make_url(url)
    except (exc.ArgumentError, ValueError) as err:
        raise DatabaseError(f"cannot use database URL {shown(url)!r}: {scrub(str(err), url)} "
                            "(expected postgresql+psycopg://USER@HOST/DB or "
                            "sqlite:///PATH)") from None
    path = sqlite_path(url)
    if path is not None:
        if must_exist and not path.exists():
            raise DatabaseError(f"no database file at {path}: check --db / --state-dir, or "
                                "create the ledger with `aegis-controller ledger append`")
        if not path.parent.is_dir():
            if must_exist:
                raise DatabaseError(f"directory {path.parent} of the database does not exist")
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        if make_url(url).get_backend_name() == "sqlite":
            engine = create_engine(url, connect_args={"timeout": LOCK_TIMEOUT})
            _sqlite_transactions(engine)
        else:
            engine = create_engine(url, pool_pre_ping=True)
    except (exc.ArgumentError, exc.NoSuchModuleError, ImportError) as err:
        raise DatabaseError(f"cannot use database URL {shown(url)!r}: "
                            f"{scrub(str(err), url)}") from None
    # Open one connection now, so a missing, corrupt or unreachable database is reported
    # here, by name, rather than halfway through a command.
    with errors(engine), engine.connect():
        pass
    return engine


def _sqlite_transactions(engine: Engine) -> None:
    """Let SQLAlchemy emit BEGIN itself (pysqlite's own BEGIN handling is legacy), so a
    writer can ask for ``BEGIN IMMEDIATE``."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        writes = conn.get_execution_options().get("aegis_writer", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if writes else "BEGIN")


def _hint(message: str) -> str:
    lowered = message.lower()
    if "not a database" in lowered or "malformed" in lowered or "corrupt" in lowered:
        return "the file is not an SQLite database or is damaged: restore it from a backup " \
               "or move it aside (the ledger's anchor file still says what it held)"
    if "database is locked" in lowered:
        return f"another process held the write lock for more than {LOCK_TIMEOUT:.0f} s"
    if "unable to open" in lowered or "readonly" in lowered or "permission" in lowered:
        return "check that the file and its directory exist and are readable and writable"
    if "no such table" in lowered or "undefinedtable" in lowered:
        return "the schema is missing: run any `aegis-controller ledger` write command " \
               "(it migrates the database) or restore the database"
    return "check the database and its URL"


@contextlib.contextmanager
def errors(engine: Engine) -> Iterator[None]:
    """Turn driver errors (except integrity conflicts, which callers retry) into
    :class:`DatabaseError` naming the database and the fix."""
    try:
        yield
    except exc.IntegrityError:
        raise
    except exc.DBAPIError as err:
        orig = str(getattr(err, "orig", None) or err).strip().splitlines()[0]
        orig = scrub(orig, engine.url)
        busy = "database is locked" in orig.lower() or "deadlock" in orig.lower()
        raise (DatabaseBusy if busy else DatabaseError)(
            f"{describe(engine.url)}: {orig} ({_hint(orig)})") from None


@contextlib.contextmanager
def writer(engine: Engine) -> Iterator[Connection]:
    """One write transaction, committed (and so durable) when the block exits."""
    with engine.connect() as conn:
        conn.execution_options(aegis_writer=True)
        with conn.begin():
            yield conn


@contextlib.contextmanager
def transaction(engine: Engine) -> Iterator[Connection]:
    """:func:`writer` inside :func:`errors`: the domain's one way to read and then write
    (the write lock is held from the read on, so a second writer waits and then reads
    what the first one wrote)."""
    with errors(engine), writer(engine) as conn:
        yield conn


def serialise_ledger(conn: Connection) -> None:
    """Hold the ledger's append lock until ``conn``'s transaction ends. On SQLite the
    writer transaction already holds the database's write lock; on PostgreSQL an advisory
    lock makes a domain transaction that appends wait for the head instead of failing on
    a taken seq (it cannot retry: its state change is in the same transaction)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LEDGER_LOCK})


@contextlib.contextmanager
def reader(engine: Engine) -> Iterator[Connection]:
    """One read transaction: a consistent snapshot for as long as the block runs."""
    with engine.connect() as conn, conn.begin():
        yield conn


def alembic_config(url: str | None = None) -> Config:
    """Alembic's configuration for the shipped migrations, without an alembic.ini. For a new
    revision: ``alembic.command.revision(alembic_config(url), "what", autogenerate=True)``
    against a database at head."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if url:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def newest_revision() -> str:
    """The newest shipped migration: each file under ``migrations/versions`` is named for its
    revision, ``NNNN_what`` (tests/unit/test_db_schema_head.py holds that to alembic's head)."""
    return max(p.stem for p in (MIGRATIONS / "versions").glob("[0-9][0-9][0-9][0-9]_*.py"))


def at_newest(engine: Engine) -> bool:
    """Whether the schema is already at :func:`newest_revision`: one read, no alembic (whose
    import and script scan cost a command-line call about a fifth of its time)."""
    with errors(engine), engine.connect() as conn:
        if not engine.dialect.has_table(conn, "alembic_version"):
            return False
        rows = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    return rows == [newest_revision()]


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest revision (idempotent; safe from several processes)."""
    if at_newest(engine):
        return
    from alembic import command
    from alembic.runtime.migration import MigrationContext

    config = alembic_config()
    # Alembic logs its set-up on every run at INFO; the useful line is ours, below.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    with errors(engine), writer(engine) as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
        before = MigrationContext.configure(conn).get_current_revision()
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
        after = MigrationContext.configure(conn).get_current_revision()
    if before != after:
        log.info("database schema upgraded", extra={
            "database": describe(engine.url),
            "from_revision": before, "to_revision": after})
