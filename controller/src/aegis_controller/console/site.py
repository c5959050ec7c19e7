"""What every console handler shares: the operator's identity (a FastAPI dependency), the
page answer with the CSRF token, checked query strings and forms, and a read transaction."""

# no ``from __future__ import annotations``: ``Site.operator`` is read by FastAPI
from collections.abc import Callable
from typing import Annotated, Any, TypeVar
from urllib.parse import parse_qs

from fastapi import Depends, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from .. import db
from ..domain import Controller
from ..errors import Invalid
from ..metrics import ControllerMetrics
from ..recovery.guard import GuardRails
from . import filters
from .auth import ConsoleAuth, ConsoleUser
from .render import answer, wants_json

PREFIX = "/console"
#: The largest form body the console reads (a reason and the token).
MAX_FORM = 4096
PAGES = (("fleet", "Fleet"), ("incidents", "Incidents"), ("recovery", "Recovery jobs"),
         ("access", "Access"), ("policies", "Policies"), ("ledger", "Ledger"))
#: Seconds between two live updates of a page (static/live.js); the ledger page is not
#: updated (a verification's result stays on screen)
LIVE_EVERY = 10
STILL = frozenset({"ledger.html"})
T = TypeVar("T")


class Site:
    def __init__(self, controller: Controller, metrics: ControllerMetrics,
                 rails: GuardRails | None) -> None:
        self.controller = controller
        self.metrics = metrics
        self.rails = rails
        self.auth = ConsoleAuth(controller)

        def console_identity(request: Request) -> ConsoleUser:
            return self.auth.identify(request)

        #: the route parameter type naming the operator (certificate checked)
        self.operator = Annotated[ConsoleUser, Depends(console_identity)]

    def page(self, request: Request, user: ConsoleUser, template: str, data: dict[str, Any],
             title: str) -> Response:
        token = self.auth.token(user)  # in the forms, and for JSON clients in a header
        return answer(request, template, data, headers={"X-CSRF-Token": token}, extra={
            "title": title, "pages": PAGES, "prefix": PREFIX, "operator": user.rights.name,
            "may_approve": user.may_approve, "csrf": token,
            "live_every": 0 if template in STILL else LIVE_EVERY})

    @staticmethod
    def query(request: Request, allowed: dict[str, tuple[str, ...]]) -> dict[str, str]:
        return filters.read(request.url.query, request.query_params, allowed)

    def read(self, fn: Callable[..., T], *args: Any) -> T:
        engine = self.controller.engine
        with db.errors(engine), db.reader(engine) as conn:
            return fn(conn, *args)

    async def posted(self, request: Request, user: ConsoleUser, what: str | None
                     ) -> dict[str, str]:
        """The form, once its CSRF token is checked and (``what``: the action's words) the
        operator may approve."""
        form = await _form(request)
        self.auth.check_token(user, form.get("csrf") or request.headers.get("x-csrf-token"))
        if what is not None:
            self.auth.require_approve(user, what)
        return form

    @staticmethod
    def done(request: Request, where: str, result: Any) -> Response:
        if wants_json(request):
            return JSONResponse(result)
        return RedirectResponse(f"{PREFIX}/{where}", status_code=303)


async def _form(request: Request) -> dict[str, str]:
    body = await request.body()
    if len(body) > MAX_FORM:
        raise Invalid(f"the form is {len(body)} bytes: the console reads at most {MAX_FORM}")
    try:
        fields = parse_qs(body.decode(), max_num_fields=8, strict_parsing=bool(body))
    except (UnicodeDecodeError, ValueError):
        raise Invalid("the form is not URL-encoded text: post it from a console page") from None
    return {k: v[0] for k, v in fields.items()}
