"""The console's forms: approve / reject a held recovery job, approve / deny an access
request (operators issued ``--approve``), and verify the ledger (any operator: it changes
nothing). Each checks the CSRF token, runs the domain off the event loop, and redirects
to its page (303) or answers JSON."""

# no ``from __future__ import annotations``: FastAPI reads the routes' annotations
import threading

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from ..errors import Conflict, Invalid
from . import ledger
from .auth import ConsoleUser
from .site import PREFIX, Site


def add_actions(app: FastAPI, site: Site) -> None:
    controller = site.controller
    Operator = site.operator  # a type, for FastAPI

    @app.post(PREFIX + "/recovery/{job_id}/approve", include_in_schema=False)
    async def recovery_approve(job_id: str, request: Request, user: Operator) -> Response:
        await site.posted(request, user, "approve recovery jobs")
        return site.done(request, "recovery", await run_in_threadpool(
            controller.recovery.approve, job_id, user.actor))

    @app.post(PREFIX + "/recovery/{job_id}/reject", include_in_schema=False)
    async def recovery_reject(job_id: str, request: Request, user: Operator) -> Response:
        form = await site.posted(request, user, "reject recovery jobs")
        return site.done(request, "recovery", await run_in_threadpool(
            controller.recovery.reject, job_id, user.actor, form.get("reason", "")))

    @app.post(PREFIX + "/access/{request_id}/{verb}", include_in_schema=False)
    async def access_decide(request_id: str, verb: str, request: Request,
                            user: Operator) -> Response:
        if verb not in ("approve", "deny"):
            raise Invalid(f"/access/ID/{verb[:20]}: give approve or deny")
        form = await site.posted(request, user, f"{verb} access requests")
        act = controller.access.approve if verb == "approve" else controller.access.deny
        state = await run_in_threadpool(act, user.as_user(), request_id,
                                        form.get("reason", "")[:500])
        return site.done(request, "access", state.model_dump(mode="json"))

    verifying = threading.Lock()  # one console verification at a time: it takes every CPU

    def verify(request: Request, user: ConsoleUser) -> Response:
        if not verifying.acquire(blocking=False):
            raise Conflict("a ledger verification started from the console is running: "
                           "wait for it to end and verify again")
        try:
            result = site.metrics.verify_result(controller.ledger)
        finally:
            verifying.release()
        data = {**site.read(ledger.ledger), "verify": result.to_dict(),
                "first_bad": site.read(ledger.first_bad, result.first_bad_seq)}
        return site.page(request, user, "ledger.html", data, "Ledger")

    @app.post(PREFIX + "/ledger/verify", include_in_schema=False)
    async def ledger_verify(request: Request, user: Operator) -> Response:
        await site.posted(request, user, None)
        return await run_in_threadpool(verify, request, user)
