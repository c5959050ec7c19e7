"""The console's pages under ``/console``: one handler per page, answering HTML or, for
``Accept: application/json``, the same data as JSON (the forms' routes: :mod:`.actions`)."""

# no ``from __future__ import annotations``: FastAPI reads the routes' annotations, and
# Operator is local to add_console
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response

from ..domain import Controller
from ..metrics import ControllerMetrics
from ..nodes import NodeState
from ..recovery.guard import GuardRails
from . import access, fleet, incidents, ledger, node, policies, recovery
from .actions import add_actions
from .render import HEADERS
from .site import PREFIX, Site

LIVE_JS = (Path(__file__).parent / "static" / "live.js").read_bytes()


def add_console(app: FastAPI, controller: Controller, metrics: ControllerMetrics,
                rails: GuardRails | None = None) -> None:
    site = Site(controller, metrics, rails)
    Operator = site.operator  # a type, for FastAPI

    @app.get(PREFIX, include_in_schema=False)
    @app.get(PREFIX + "/", include_in_schema=False)
    def home(_user: Operator) -> Response:
        return RedirectResponse(f"{PREFIX}/fleet", status_code=303)

    @app.get(PREFIX + "/static/live.js", include_in_schema=False)
    def live_js(_user: Operator) -> Response:
        """The pages' live updates (the console's only script)."""
        return Response(LIVE_JS, media_type="text/javascript",
                        headers={**HEADERS, "Cache-Control": "private, max-age=3600"})

    @app.get(PREFIX + "/fleet", include_in_schema=False)
    def fleet_page(request: Request, user: Operator) -> Response:
        f = site.query(request, {"state": tuple(s.value for s in NodeState),
                                 "sort": fleet.SORTS, "order": ("asc", "desc"), "q": ()})
        data = site.read(fleet.fleet, f["state"], f["sort"], f["order"], f["q"])
        return site.page(request, user, "fleet.html", data, "Fleet")

    @app.get(PREFIX + "/nodes/{node_id}", include_in_schema=False)
    def node_page(node_id: str, request: Request, user: Operator) -> Response:
        site.query(request, {})
        return site.page(request, user, "node.html", site.read(node.node, node_id[:200]),
                         f"Node {node_id[:63]}")

    @app.get(PREFIX + "/incidents", include_in_schema=False)
    def incidents_page(request: Request, user: Operator) -> Response:
        site.query(request, {})
        return site.page(request, user, "incidents.html", site.read(incidents.timeline),
                         "Incidents")

    @app.get(PREFIX + "/recovery", include_in_schema=False)
    def recovery_page(request: Request, user: Operator) -> Response:
        site.query(request, {})
        return site.page(request, user, "recovery.html", site.read(recovery.jobs, rails),
                         "Recovery jobs")

    @app.get(PREFIX + "/access", include_in_schema=False)
    def access_page(request: Request, user: Operator) -> Response:
        site.query(request, {})
        return site.page(request, user, "access.html", access.access(controller), "Access")

    @app.get(PREFIX + "/policies", include_in_schema=False)
    def policies_page(request: Request, user: Operator) -> Response:
        site.query(request, {})
        return site.page(request, user, "policies.html", policies.policies(controller),
                         "Policies")

    @app.get(PREFIX + "/ledger", include_in_schema=False)
    def ledger_page(request: Request, user: Operator) -> Response:
        site.query(request, {})
        return site.page(request, user, "ledger.html",
                         {**site.read(ledger.ledger), "verify": None}, "Ledger")

    add_actions(app, site)
