"""Alembic environment for the controller's database.

Run through :func:`aegis_controller.db.upgrade`, which hands over a connection already
inside a serialised write transaction (``config.attributes["connection"]``). Run through
``alembic.command`` with :func:`aegis_controller.db.alembic_config` (url given), it opens
its own engine from ``sqlalchemy.url``.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from aegis_controller import db, tables  # noqa: F401  (tables registers the state tables)
from aegis_controller.ledger import store  # noqa: F401  (registers the ledger's table)


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=db.metadata,
        # SQLite cannot ALTER most things in place: batch mode copies the table.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("no database: use aegis_controller.db.alembic_config(url)")
    engine = db.open_engine(url)
    with db.writer(engine) as conn:
        _run(conn)


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run against a database")
run_migrations_online()
