"""The Policies page: the access policy in force (roles, services, rules) and a flow graph
of which access roles reach which services, drawn on the server as SVG; and the label
policies in force (which nodes may talk to which), each with its observe/enforce mode and,
per destination node, the counters its agent last reported (``label_policy_counters``
events: packets and bytes allowed, dropped, and observed — would-be drops in observe
mode)."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa

from .. import db, tables
from ..domain import Controller
from ..errors import Conflict

ROW = 44
WIDTH = 640


def _graph(doc: dict[str, Any]) -> dict[str, Any]:
    """Boxes for roles (left) and services (right), one line per (rule, role)."""
    roles = sorted(doc["roles"])
    services = sorted(doc["services"])
    left = {r: 20 + i * ROW for i, r in enumerate(roles)}
    right = {s: 20 + i * ROW for i, s in enumerate(services)}
    edges = []
    for rule in doc["rules"]:
        for role in rule["roles"]:
            edges.append({"from": role, "to": rule["service"], "y1": left[role] + 14,
                          "y2": right[rule["service"]] + 14, "action": rule["action"],
                          "label": rule["name"] + (f" ({rule['approvals']} approval"
                                                   f"{'s' if rule['approvals'] > 1 else ''})"
                                                   if rule["approvals"] else "")})
    height = 40 + ROW * max(len(roles), len(services), 1)
    return {"width": WIDTH, "height": height, "roles": left, "services": right,
            "edges": edges}


#: counters an agent reports per label policy (agent/bpf/policy_edges.py)
COUNTERS = ("allowed_packets", "allowed_bytes", "dropped_packets", "dropped_bytes",
            "observed_packets", "observed_bytes")
#: newest counter reports read (one per node and policy is kept)
REPORTS = 5000
#: how a counter report's data starts (stored as sorted JSON by the intake)
REPORT_MARK = '%"what": "label_policy_counters"%'


def label_policies(controller: Controller) -> dict[str, Any]:
    """The label policies in force with, per policy, each node's last reported counters
    and their sum; ``note`` says why there are none."""
    try:
        doc = controller.segment.current()
    except Conflict as e:
        return {"version": None, "policies": [], "note": e.message}
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    ev = tables.events.c
    with db.errors(controller.engine), db.reader(controller.engine) as conn:
        rows = conn.execute(sa.select(ev.node_id, ev.ts_ns, ev.data).where(
            ev.kind == "agent", ev.data.like(REPORT_MARK)
        ).order_by(ev.ts_ns.desc()).limit(REPORTS)).all()
    for row in reversed(rows):  # oldest first: the newest per (policy, node) stays
        data = json.loads(row.data)
        if data.get("what") == "label_policy_counters":
            latest[(str(data.get("policy")), row.node_id)] = {
                "node_id": row.node_id, "ts_ns": row.ts_ns, "mode": data.get("mode"),
                "edges": data.get("edges", 0),
                **{k: int(data.get(k, 0) or 0) for k in COUNTERS}}
    out = []
    for p in doc["policies"]:
        nodes = sorted((r for (name, _n), r in latest.items() if name == p["name"]),
                       key=lambda r: r["node_id"])
        out.append({**p, "nodes": nodes,
                    "totals": {k: sum(r[k] for r in nodes) for k in COUNTERS}})
    return {"version": doc["version"], "policies": out, "note": ""}


def policies(controller: Controller) -> dict[str, Any]:
    segment = label_policies(controller)
    try:
        doc = controller.access.current_policy()
    except Conflict as e:
        return {"policy": None, "note": e.message, "graph": None, "segment": segment}
    return {"policy": doc, "note": "", "graph": _graph(doc), "segment": segment}
