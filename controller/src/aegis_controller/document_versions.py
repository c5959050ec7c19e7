"""Versioned policy documents (the access policy, the label policies): each ``set`` adds a
version, the newest is in force, none is ever rewritten. Tables made by
:func:`~.tables.document_versions`."""

from __future__ import annotations

import json
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection

from .errors import Conflict


def add(conn: Connection, table: sa.Table, document: dict[str, Any], digest: str,
        actor: str) -> int:
    """Store ``document`` as the newest version (in the caller's transaction)."""
    return int(conn.execute(table.insert().values(
        document=json.dumps(document), digest=digest, set_at=int(time.time()),
        set_by=actor)).inserted_primary_key[0])


def newest(conn: Connection, table: sa.Table, what: str, command: str
           ) -> tuple[int, dict[str, Any]]:
    """(version, document) in force; :class:`Conflict` naming ``command`` when none is."""
    row = conn.execute(sa.select(table.c.version, table.c.document)
                       .order_by(table.c.version.desc()).limit(1)).first()
    if row is None:
        raise Conflict(f"no {what} is set: an operator sets one with `{command}`")
    return row.version, json.loads(row.document)
