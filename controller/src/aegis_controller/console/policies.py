"""The Policies page: the access policy in force (roles, services, rules) and a flow graph
of which access roles reach which services, drawn on the server as SVG. (The segment
filters' per-edge counters and observe/enforce mode live on the agents, in their metrics
textfile; the controller holds none of them, so this page does not show them.)"""

from __future__ import annotations

from typing import Any

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


def policies(controller: Controller) -> dict[str, Any]:
    try:
        doc = controller.access.current_policy()
    except Conflict as e:
        return {"policy": None, "note": e.message, "graph": None}
    return {"policy": doc, "note": "", "graph": _graph(doc)}
