"""The Fleet page: every node with its trust state and the reason, last heartbeat, agent
version (flagged when it is not the profile's), kernel, open grants; counts per state."""

from __future__ import annotations

import json
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection

from .. import tables
from ..nodes import NodeState

SORTS = ("node_id", "state", "heartbeat", "agent")
_n = tables.nodes.c
_e = tables.access_edges.c


def measured(row: Any) -> dict[str, Any]:
    """Agent version, kernel and the enforcement's attach modes from the last attestation
    (``segment: xdp/native tcx``, ``exec: lsm``...), and whether the agent is not the
    version the node's expected profile names."""
    m = json.loads(row.measurement) if row.measurement else {}
    p = json.loads(row.profile) if row.profile else {}
    agent, wanted = m.get("agent_version"), p.get("agent_version")
    modes = {str(b["component"]): str(b["mode"]) for b in m.get("bpf", [])
             if isinstance(b, dict) and "component" in b and "mode" in b}
    return {"agent_version": agent, "kernel": m.get("kernel_release"),
            "attach_modes": modes,
            "agent_outdated": bool(agent and wanted and agent != wanted),
            "expected_agent_version": wanted}


def fleet(conn: Connection, state: str = "", sort: str = "", order: str = "",
          q: str = "") -> dict[str, Any]:
    counts = dict.fromkeys((s.value for s in NodeState), 0)
    for st, n in conn.execute(sa.select(_n.state, sa.func.count()).group_by(_n.state)):
        counts[st] = n
    grants = dict(conn.execute(sa.select(_e.node_id, sa.func.count())
                               .where(_e.status == "active").group_by(_e.node_id)).all())
    query = sa.select(_n.node_id, _n.state, _n.reason, _n.heartbeat_at, _n.last_seen,
                      _n.measurement, _n.profile, _n.address)
    if state:
        query = query.where(_n.state == state)
    if q:
        query = query.where(_n.node_id.contains(q, autoescape=True))
    now = time.time()
    nodes = []
    for row in conn.execute(query):
        nodes.append({"node_id": row.node_id, "state": row.state, "reason": row.reason,
                      "heartbeat_at": row.heartbeat_at, "last_seen": row.last_seen,
                      "address": row.address, "open_grants": grants.get(row.node_id, 0),
                      "heartbeat_age_s": None if not row.heartbeat_at
                      else max(0, int(now - row.heartbeat_at)), **measured(row)})
    key = {"node_id": lambda n: n["node_id"], "state": lambda n: (n["state"], n["node_id"]),
           "heartbeat": lambda n: (n["heartbeat_at"] or 0, n["node_id"]),
           "agent": lambda n: (n["agent_version"] or "", n["node_id"])}[sort or "node_id"]
    nodes.sort(key=key, reverse=order == "desc")
    return {"counts": counts, "total": sum(counts.values()), "shown": len(nodes),
            "filter": {"state": state, "sort": sort or "node_id", "order": order or "asc",
                       "q": q}, "nodes": nodes}
