"""The Ledger page: the head record, the last checkpoint, and "verify now", which runs the
whole verification (timed into the metrics) and names the first bad record."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection

from ..ledger.records import Kind
from ..ledger.store import records_table

_t = records_table.c


def _brief(row: Any) -> dict[str, Any] | None:
    if row is None:
        return None
    return {"seq": row.seq, "ts": row.ts, "kind": row.kind, "subject": row.subject,
            "actor": row.actor, "hash": row.hash}


def ledger(conn: Connection) -> dict[str, Any]:
    cols = (_t.seq, _t.ts, _t.kind, _t.subject, _t.actor, _t.hash)
    head = conn.execute(sa.select(*cols).order_by(_t.seq.desc()).limit(1)).first()
    checkpoint = conn.execute(sa.select(*cols).where(_t.kind == Kind.CHECKPOINT)
                              .order_by(_t.seq.desc()).limit(1)).first()
    return {"head": _brief(head), "last_checkpoint": _brief(checkpoint)}


def first_bad(conn: Connection, seq: int | None) -> dict[str, Any] | None:
    """The stored record a verification named (``None`` when it names none or it is gone)."""
    if seq is None:
        return None
    row = conn.execute(sa.select(_t.seq, _t.ts, _t.kind, _t.subject, _t.actor, _t.hash)
                       .where(_t.seq == seq)).first()
    return _brief(row)
