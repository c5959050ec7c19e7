"""One handler, two answers: HTML from a Jinja2 template, or the same data as JSON when
the request's ``Accept`` asks for ``application/json``. Errors are pages too (never a
traceback), with the status and a sentence saying what was wrong."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

TEMPLATES = Path(__file__).with_name("templates")
_env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]),
                   trim_blocks=True, lstrip_blocks=True)


def _when(ts: float | None) -> str:
    if not ts:
        return "—"
    return dt.datetime.fromtimestamp(float(ts), dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _ago(ts: float | None) -> str:
    if not ts:
        return "never"
    return f"{_span(time.time() - float(ts))} ago"


def _span(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    s = max(0, int(seconds))
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


_env.filters.update(when=_when, ago=_ago, span=_span)


#: Every console answer: no script but the console's own file (live.js: no inline script,
#: no eval), fetches only to itself, no framing (a button cannot be clicked through another
#: site's page), forms post only here, nothing cached or sent as a referrer.
HEADERS = {"Content-Security-Policy": "default-src 'none'; script-src 'self'; "
                                      "connect-src 'self'; style-src 'unsafe-inline'; "
                                      "img-src 'self'; form-action 'self'; "
                                      "frame-ancestors 'none'; base-uri 'none'",
           "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
           "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def wants_json(request: Request) -> bool:
    return "application/json" in request.headers.get("accept", "")


def answer(request: Request, template: str, data: dict[str, Any], *,
           extra: dict[str, Any] | None = None, headers: dict[str, str] | None = None,
           status: int = 200) -> Response:
    """``data`` as JSON, or rendered by ``template`` (with ``extra``: the page's own
    things, such as the CSRF token, never in the JSON)."""
    headers = {**HEADERS, **(headers or {})}
    if wants_json(request):
        return JSONResponse(data, status_code=status, headers=headers)
    html = _env.get_template(template).render(**data, **(extra or {}))
    return HTMLResponse(html, status_code=status, headers=headers)


TITLES = {400: "Bad request", 401: "Certificate needed", 403: "Not allowed",
          404: "Not found", 409: "Conflict", 422: "Bad request", 429: "Slow down",
          500: "Controller error", 503: "Busy"}


def error_page(request: Request, status: int, detail: str,
               headers: dict[str, str] | None = None) -> Response:
    headers = {**HEADERS, **(headers or {})}
    if wants_json(request):
        return JSONResponse({"detail": detail}, status_code=status, headers=headers)
    html = _env.get_template("error.html").render(
        status=status, title=TITLES.get(status, "Error"), detail=detail)
    return HTMLResponse(html, status_code=status, headers=headers)
