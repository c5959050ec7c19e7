"""The console's routes under ``/console``: one handler per page, answering HTML or, for
``Accept: application/json``, the same data as JSON; forms post back with the CSRF token
and redirect to their page (303) or answer JSON."""

# no ``from __future__ import annotations``: FastAPI reads the routes' annotations, and
# Operator is local to add_console
import threading
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from .. import db
from ..domain import Controller
from ..errors import Conflict, Invalid
from ..metrics import ControllerMetrics
from ..nodes import NodeState
from ..recovery.guard import GuardRails
from . import access, filters, fleet, incidents, ledger, node, policies, recovery
from .auth import ConsoleAuth, ConsoleUser
from .render import answer, wants_json

PREFIX = "/console"
#: The largest form body the console reads (a reason and the token).
MAX_FORM = 4096
PAGES = (("fleet", "Fleet"), ("incidents", "Incidents"), ("recovery", "Recovery jobs"),
         ("access", "Access"), ("policies", "Policies"), ("ledger", "Ledger"))


async def _form(request: Request) -> dict[str, str]:
    body = await request.body()
    if len(body) > MAX_FORM:
        raise Invalid(f"the form is {len(body)} bytes: the console reads at most {MAX_FORM}")
    try:
        fields = parse_qs(body.decode(), max_num_fields=8, strict_parsing=bool(body))
    except (UnicodeDecodeError, ValueError):
        raise Invalid("the form is not URL-encoded text: post it from a console page") from None
    return {k: v[0] for k, v in fields.items()}


def add_console(app: FastAPI, controller: Controller, metrics: ControllerMetrics,
                rails: GuardRails | None = None) -> None:
    auth = ConsoleAuth(controller)

    def console_identity(request: Request) -> ConsoleUser:
        return auth.identify(request)

    Operator = Annotated[ConsoleUser, Depends(console_identity)]

    def page(request: Request, user: ConsoleUser, template: str, data: dict[str, Any],
             title: str) -> Response:
        return answer(request, template, data, extra={
            "title": title, "pages": PAGES, "prefix": PREFIX, "operator": user.rights.name,
            "may_approve": user.may_approve, "csrf": auth.token(user)})

    def query(request: Request, allowed: dict[str, tuple[str, ...]]) -> dict[str, str]:
        return filters.read(request.url.query, request.query_params, allowed)

    def read(fn: Any, *args: Any) -> Any:
        with db.errors(controller.engine), db.reader(controller.engine) as conn:
            return fn(conn, *args)

    async def posted(request: Request, user: ConsoleUser, what: str) -> dict[str, str]:
        form = await _form(request)
        auth.check_token(user, form.get("csrf") or request.headers.get("x-csrf-token"))
        auth.require_approve(user, what)
        return form

    def done(request: Request, where: str, result: Any) -> Response:
        if wants_json(request):
            return JSONResponse(result)
        return RedirectResponse(f"{PREFIX}/{where}", status_code=303)

    @app.get(PREFIX, include_in_schema=False)
    @app.get(PREFIX + "/", include_in_schema=False)
    def home(_user: Operator) -> Response:
        return RedirectResponse(f"{PREFIX}/fleet", status_code=303)

    @app.get(PREFIX + "/fleet", include_in_schema=False)
    def fleet_page(request: Request, user: Operator) -> Response:
        f = query(request, {"state": tuple(s.value for s in NodeState), "sort": fleet.SORTS,
                            "order": ("asc", "desc"), "q": ()})
        return page(request, user, "fleet.html", read(fleet.fleet, f["state"], f["sort"],
                                                      f["order"], f["q"]), "Fleet")

    @app.get(PREFIX + "/nodes/{node_id}", include_in_schema=False)
    def node_page(node_id: str, request: Request, user: Operator) -> Response:
        query(request, {})
        return page(request, user, "node.html", read(node.node, node_id[:200]),
                    f"Node {node_id[:63]}")

    @app.get(PREFIX + "/incidents", include_in_schema=False)
    def incidents_page(request: Request, user: Operator) -> Response:
        query(request, {})
        return page(request, user, "incidents.html", read(incidents.timeline), "Incidents")

    @app.get(PREFIX + "/recovery", include_in_schema=False)
    def recovery_page(request: Request, user: Operator) -> Response:
        query(request, {})
        return page(request, user, "recovery.html", read(recovery.jobs, rails),
                    "Recovery jobs")

    @app.post(PREFIX + "/recovery/{job_id}/approve", include_in_schema=False)
    async def recovery_approve(job_id: str, request: Request, user: Operator) -> Response:
        await posted(request, user, "approve recovery jobs")
        return done(request, "recovery", await run_in_threadpool(
            controller.recovery.approve, job_id, user.actor))

    @app.post(PREFIX + "/recovery/{job_id}/reject", include_in_schema=False)
    async def recovery_reject(job_id: str, request: Request, user: Operator) -> Response:
        form = await posted(request, user, "reject recovery jobs")
        return done(request, "recovery", await run_in_threadpool(
            controller.recovery.reject, job_id, user.actor, form.get("reason", "")))

    @app.get(PREFIX + "/access", include_in_schema=False)
    def access_page(request: Request, user: Operator) -> Response:
        query(request, {})
        return page(request, user, "access.html", access.access(controller), "Access")

    @app.post(PREFIX + "/access/{request_id}/{verb}", include_in_schema=False)
    async def access_decide(request_id: str, verb: str, request: Request,
                            user: Operator) -> Response:
        if verb not in ("approve", "deny"):
            raise Invalid(f"/access/ID/{verb[:20]}: give approve or deny")
        form = await posted(request, user, f"{verb} access requests")
        act = controller.access.approve if verb == "approve" else controller.access.deny
        state = await run_in_threadpool(act, user.as_user(), request_id,
                                        form.get("reason", "")[:500])
        return done(request, "access", state.model_dump(mode="json"))

    @app.get(PREFIX + "/policies", include_in_schema=False)
    def policies_page(request: Request, user: Operator) -> Response:
        query(request, {})
        return page(request, user, "policies.html", policies.policies(controller), "Policies")

    @app.get(PREFIX + "/ledger", include_in_schema=False)
    def ledger_page(request: Request, user: Operator) -> Response:
        query(request, {})
        return page(request, user, "ledger.html", {**read(ledger.ledger), "verify": None},
                    "Ledger")

    @app.post(PREFIX + "/ledger/verify", include_in_schema=False)
    async def ledger_verify(request: Request, user: Operator) -> Response:
        # any operator may verify: it changes nothing
        auth.check_token(user, (await _form(request)).get("csrf")
                         or request.headers.get("x-csrf-token"))
        return await run_in_threadpool(verify, request, user)

    verifying = threading.Lock()  # one console verification at a time: it takes every CPU

    def verify(request: Request, user: ConsoleUser) -> Response:
        if not verifying.acquire(blocking=False):
            raise Conflict("a ledger verification started from the console is running: "
                           "wait for it to end and verify again")
        try:
            result = metrics.verify_result(controller.ledger)
        finally:
            verifying.release()
        data = {**read(ledger.ledger), "verify": result.to_dict(),
                "first_bad": read(ledger.first_bad, result.first_bad_seq)}
        return page(request, user, "ledger.html", data, "Ledger")
