"""The Node page: state and reason, attestation and trust history (from the ledger),
inventory, recent events, incidents, recovery jobs and access grants of one node."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection

from .. import tables
from ..errors import NotFound
from ..ledger.records import Kind
from ..ledger.store import records_table
from .fleet import measured

EVENTS = 50
HISTORY = 30
_n = tables.nodes.c
_t = records_table.c


def _history(conn: Connection, node_id: str) -> list[dict[str, Any]]:
    rows = conn.execute(sa.select(_t.seq, _t.ts, _t.kind, _t.actor, _t.body).where(
        _t.subject == node_id, _t.kind.in_([Kind.ATTESTATION, Kind.STATE_CHANGE,
                                             Kind.ENROLLMENT, Kind.REBUILD]))
        .order_by(_t.seq.desc()).limit(HISTORY)).all()
    out = []
    for r in rows:
        try:
            body = json.loads(r.body)
        except ValueError:
            body = {"_raw": r.body[:200]}
        out.append({"seq": r.seq, "ts": r.ts, "kind": r.kind, "actor": r.actor,
                    "summary": _summary(body)})
    return out


def _summary(body: Any) -> str:
    if not isinstance(body, dict):
        return str(body)[:300]
    parts = []
    for key in ("from", "to", "verdict", "state", "reason", "mismatches", "event"):
        value = body.get(key)
        if isinstance(value, list):  # an attestation's differences from the profile
            value = "; ".join(str(v) for v in value) or "none"
        if value is not None:
            parts.append(f"{key}: {value}")
    return "; ".join(parts)[:600] or json.dumps(body, sort_keys=True)[:300]


def _inventory(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    inv = json.loads(text)
    return {"os": inv.get("os"), "kernel": inv.get("kernel"),
            "packages": len(inv.get("packages", {})),
            "services": sorted(inv.get("services", {}).items())[:50],
            "listening": inv.get("listening", [])[:50]}


#: entries shown per list of what changed
CHANGES = 50


def _added_removed(before: set[str], after: set[str]) -> dict[str, list[str]]:
    return {"added": sorted(after - before)[:CHANGES],
            "removed": sorted(before - after)[:CHANGES]}


def _changes(before: str | None, after: str | None,
             at: int | None) -> dict[str, Any] | None:
    """What changed in the node's inventory at its last change (None: it never changed
    since the controller first had it): packages added, removed and upgraded or
    downgraded, services whose state changed, listening sockets opened and closed."""
    if not before or not after:
        return None
    a, b = json.loads(before), json.loads(after)
    pa, pb = a.get("packages", {}), b.get("packages", {})
    sa_, sb = a.get("services", {}), b.get("services", {})
    la = {f"{x['proto']} {x['address']}:{x['port']}" for x in a.get("listening", [])}
    lb = {f"{x['proto']} {x['address']}:{x['port']}" for x in b.get("listening", [])}
    packages = _added_removed({f"{k} {v}" for k, v in pa.items() if k not in pb},
                              {f"{k} {v}" for k, v in pb.items() if k not in pa})
    packages["changed"] = sorted(f"{k} {pa[k]} → {pb[k]}" for k in pa.keys() & pb.keys()
                                 if pa[k] != pb[k])[:CHANGES]
    services = _added_removed({k for k in sa_ if k not in sb}, {k for k in sb if k not in sa_})
    services["changed"] = sorted(f"{k}: {sa_[k]} → {sb[k]}" for k in sa_.keys() & sb.keys()
                                 if sa_[k] != sb[k])[:CHANGES]
    return {"at": at, "os": [a.get("os"), b.get("os")] if a.get("os") != b.get("os") else None,
            "kernel": ([a.get("kernel"), b.get("kernel")]
                       if a.get("kernel") != b.get("kernel") else None),
            "packages": packages, "services": services, "listening": _added_removed(la, lb)}


def node(conn: Connection, node_id: str) -> dict[str, Any]:
    row = conn.execute(sa.select(tables.nodes).where(_n.node_id == node_id)).first()
    if row is None:
        raise NotFound(f"no node {node_id!r}: see the fleet page for the nodes on record")
    e, i, j, a, r = (tables.events.c, tables.incidents.c, tables.recovery_jobs.c,
                     tables.access_edges.c, tables.access_requests.c)
    events = [{"ts_ns": x.ts_ns, "kind": x.kind, "severity": x.severity,
               "data": x.data[:300]} for x in conn.execute(
        sa.select(e.ts_ns, e.kind, e.severity, e.data).where(e.node_id == node_id)
        .order_by(e.ts_ns.desc()).limit(EVENTS))]
    incidents = [dict(x._mapping) for x in conn.execute(
        sa.select(i.incident_id, i.rule, i.severity, i.summary, i.created_at, i.order_id)
        .where(i.node_id == node_id).order_by(i.created_at.desc()).limit(50))]
    jobs = [dict(x._mapping) for x in conn.execute(
        sa.select(j.job_id, j.state, j.cause, j.reason, j.flagged_at, j.ended_at)
        .where(j.node_id == node_id).order_by(j.flagged_at.desc()).limit(20))]
    grants = [dict(x._mapping) for x in conn.execute(
        sa.select(a.request_id, a.edge, a.status, r.user_name, r.service, r.expires_at)
        .join(tables.access_requests, r.request_id == a.request_id)
        .where(a.node_id == node_id).order_by(r.created_at.desc()).limit(50))]
    return {"node": {"node_id": row.node_id, "state": row.state, "reason": row.reason,
                     "enrolled_at": row.enrolled_at, "heartbeat_at": row.heartbeat_at,
                     "address": row.address,
                     "labels": json.loads(row.labels) if row.labels else {},
                     **measured(row)},
            "inventory": _inventory(row.inventory),
            "inventory_changes": _changes(row.inventory_previous, row.inventory,
                                          row.inventory_changed_at),
            "history": _history(conn, node_id),
            "events": events, "incidents": incidents, "recovery_jobs": jobs,
            "grants": grants}
