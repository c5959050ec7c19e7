"""A small client for AWX / Ansible Automation Platform controller (formerly Tower).

The optional backend for recovery steps: instead of running a playbook through
ansible-runner on the controller, a step can be launched as an AWX job template and
followed over AWX's REST API (v2):

* ``launch``  POST ``/api/v2/job_templates/{id}/launch/`` with ``extra_vars``; AWX answers
  201 with the new job's id in ``job``. A template may be named instead of numbered
  (looked up with GET ``/api/v2/job_templates/?name=...``).
* ``status``  GET ``/api/v2/jobs/{id}/`` (``status``: new, pending, waiting, running,
  then one of successful, failed, error, canceled).
* ``events``  GET ``/api/v2/jobs/{id}/job_events/?order_by=counter&counter__gt=N``,
  following the ``next`` links of AWX's pagination (fields ``counter``, ``event``,
  ``event_data``, ``stdout``).
* ``cancel``  POST ``/api/v2/jobs/{id}/cancel/`` (202; 405 once the job cannot be canceled).
* ``wait``    polls status and events until a final status or a timeout.

Authentication is an OAuth2 / personal access token sent as ``Authorization: Bearer``.
Every failure is one :class:`AwxError` line: the HTTP status and AWX's ``detail`` (or its
field errors), never the token. Variables AWX refuses at launch (400 with
``variables_needed_to_start``, or ``extra_vars`` dropped into ``ignored_fields`` because
the template does not prompt for variables) are reported by name.

The recovery engine's AWX backend (:mod:`aegis_controller.recovery.awx_steps`) uses it.
It has been tested only against a local stand-in HTTP server (tests/awx_standin.py), never
against a real AWX.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

FINAL_STATUSES = frozenset({"successful", "failed", "error", "canceled"})
"""AWX's job statuses after which nothing more happens to the job."""


class AwxError(Exception):
    """A request AWX refused or could not answer; the message is one line without the token."""

    def __init__(
        self, message: str, *, status: int | None = None, variables: tuple[str, ...] = ()
    ) -> None:
        self.message = message
        self.status = status
        self.variables = variables
        super().__init__(message)


@dataclass(frozen=True)
class JobResult:
    """How a followed job ended (``status`` is one of :data:`FINAL_STATUSES`)."""

    job_id: int
    status: str
    failed: bool
    job_explanation: str
    events_seen: int
    #: What the job's playbook handed back with ``set_stats`` (AWX's ``artifacts``).
    artifacts: dict[str, Any] = field(default_factory=dict)


def _detail(response: httpx.Response) -> str:
    """AWX's own explanation of an error answer, flattened to one line."""
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip().replace("\n", " ")
        return text[:200] or response.reason_phrase
    if isinstance(body, dict):
        if "detail" in body:
            return str(body["detail"])
        parts = []
        for key, value in body.items():
            values = value if isinstance(value, list) else [value]
            parts.append(f"{key}: {'; '.join(str(v) for v in values)}")
        return ", ".join(parts) or response.reason_phrase
    return str(body)[:200]


class AwxClient:
    """Speaks to one AWX at ``base_url`` (``https://awx.example.com``) with a bearer token.

    ``ca`` is a CA bundle for an https AWX with a private CA (default: the system's);
    ``verify_tls=False`` does not check AWX's certificate at all (a test AWX only).
    The token is kept in the HTTP client's headers only; it is in no message or repr.
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        ca: str | Path | None = None,
        timeout: float = 30.0,
        poll_interval: float = 2.0,
        verify_tls: bool = True,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise AwxError(f"AWX base URL {base_url!r} must start with http:// or https://")
        if not token:
            raise AwxError("AWX token is empty: create one (AWX: Users → Tokens) and pass it")
        self.base_url = base_url.rstrip("/")
        self.poll_interval = poll_interval
        verify: Any = (str(ca) if ca else True) if verify_tls else False
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            verify=verify,
            timeout=timeout,
        )

    def __repr__(self) -> str:
        return f"AwxClient(base_url={self.base_url!r})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AwxClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport -------------------------------------------------------------------

    def _request(self, method: str, url: str, what: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            # httpx's messages name the URL and the reason, never the request's headers
            raise AwxError(
                f"AWX {what}: cannot reach {self.base_url}: {type(exc).__name__}: {exc}"
            ) from None
        if response.status_code == 401:
            raise AwxError(
                f"AWX {what}: HTTP 401 {_detail(response)} (the token is refused: check it has not "
                "expired or been revoked)",
                status=401,
            )
        return response

    def _fail(self, what: str, response: httpx.Response) -> AwxError:
        return AwxError(
            f"AWX {what}: HTTP {response.status_code} {_detail(response)}",
            status=response.status_code,
        )

    def _get_json(self, url: str, what: str, **kwargs: Any) -> dict[str, Any]:
        response = self._request("GET", url, what, **kwargs)
        if response.status_code != 200:
            raise self._fail(what, response)
        return response.json()

    # -- API -------------------------------------------------------------------------

    def template_id(self, template: int | str) -> int:
        """The id of a job template given by id or by its (exact) name."""
        if isinstance(template, int):
            return template
        if template.isdigit():
            return int(template)
        what = f"find job template {template!r}"
        body = self._get_json("/api/v2/job_templates/", what, params={"name": template})
        results = body.get("results", [])
        if not results:
            raise AwxError(
                f"AWX {what}: no job template of that name (or the token may not read it)"
            )
        return int(results[0]["id"])

    def launch(self, template: int | str, extra_vars: dict[str, Any] | None = None) -> int:
        """Launch a job template; returns the new job's id."""
        template_id = self.template_id(template)
        what = f"launch job template {template_id}"
        payload: dict[str, Any] = {}
        if extra_vars:
            payload["extra_vars"] = extra_vars
        response = self._request(
            "POST", f"/api/v2/job_templates/{template_id}/launch/", what, json=payload
        )
        if response.status_code == 400:
            body = _json_or_empty(response)
            needed = body.get("variables_needed_to_start")
            if needed:
                names = _variable_names(needed)
                raise AwxError(
                    f"AWX {what}: HTTP 400 variables needed to start: {', '.join(names)} "
                    "(pass them in extra_vars)",
                    status=400,
                    variables=tuple(names),
                )
            if "extra_vars" in body:
                names = tuple(sorted(extra_vars or {}))
                raise AwxError(
                    f"AWX {what}: HTTP 400 extra_vars refused ({', '.join(names)}): "
                    f"{_detail(response)} (enable 'Prompt on launch' for variables on the "
                    "template, or add them to its survey)",
                    status=400,
                    variables=names,
                )
        if response.status_code != 201:
            raise self._fail(what, response)
        body = response.json()
        job_id = int(body.get("job") or body["id"])
        ignored = body.get("ignored_fields", {}) or {}
        if extra_vars and "extra_vars" in ignored:
            # AWX started the job without the variables: a recovery step must not run like that
            dropped = ignored["extra_vars"]
            names = (
                tuple(sorted(dropped)) if isinstance(dropped, dict) else tuple(sorted(extra_vars))
            )
            cancelled = self._try_cancel(job_id)
            raise AwxError(
                f"AWX {what}: extra_vars not allowed by the template, AWX ignored "
                f"{', '.join(names)} "
                f"(job {job_id} {'canceled' if cancelled else 'could not be canceled'}); enable "
                "'Prompt on launch' for variables on the template",
                status=201,
                variables=names,
            )
        return job_id

    def status(self, job_id: int) -> dict[str, Any]:
        """The job record (``status``, ``failed``, ``job_explanation``, ...)."""
        return self._get_json(f"/api/v2/jobs/{job_id}/", f"status of job {job_id}")

    def events(self, job_id: int, since: int = 0) -> Iterator[dict[str, Any]]:
        """The job's events with ``counter`` > ``since``, in counter order, across pages."""
        what = f"events of job {job_id}"
        url: str | None = f"/api/v2/jobs/{job_id}/job_events/"
        params: dict[str, Any] | None = {"order_by": "counter", "counter__gt": since}
        while url:
            body = self._get_json(url, what, params=params)
            yield from body.get("results", [])
            url = body.get("next")
            params = None  # AWX's ``next`` link carries the query string itself

    def cancel(self, job_id: int) -> None:
        """Ask AWX to cancel the job (AWX answers 202; 405 if it can no longer be canceled)."""
        what = f"cancel job {job_id}"
        response = self._request("POST", f"/api/v2/jobs/{job_id}/cancel/", what)
        if response.status_code not in (200, 202, 204):
            raise self._fail(what, response)

    def _try_cancel(self, job_id: int) -> bool:
        try:
            self.cancel(job_id)
        except AwxError:
            return False
        return True

    def wait(
        self,
        job_id: int,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        *,
        timeout: float = 3600.0,
        cancel: threading.Event | None = None,
        cancel_grace: float = 60.0,
    ) -> JobResult:
        """Poll until the job reaches a final status, streaming new events to ``on_event``.

        Events are handed over once each, in counter order; after the final status one
        last read picks up the events AWX wrote as the job ended. Past ``timeout`` seconds
        an :class:`AwxError` says so (the job is left running: cancel it if that is meant).
        When ``cancel`` is set, AWX is asked once to cancel the job and the wait goes on
        (at most ``cancel_grace`` seconds more) until AWX reports it ended, ``canceled``
        as a rule.
        """
        deadline = time.monotonic() + timeout
        last = 0
        seen = 0
        cancel_sent = False
        while True:
            if cancel is not None and cancel.is_set() and not cancel_sent:
                cancel_sent = True
                self._try_cancel(job_id)  # 405: it ended meanwhile, the status says how
                deadline = min(deadline, time.monotonic() + cancel_grace)
            job = self.status(job_id)
            for event in self.events(job_id, since=last):
                last = max(last, int(event.get("counter", last)))
                seen += 1
                if on_event is not None:
                    on_event(event)
            status = str(job.get("status", ""))
            if status in FINAL_STATUSES:
                artifacts = job.get("artifacts")
                return JobResult(
                    job_id=job_id,
                    status=status,
                    failed=status != "successful",  # canceled and error count as failed too
                    job_explanation=str(job.get("job_explanation", "")),
                    events_seen=seen,
                    artifacts=dict(artifacts) if isinstance(artifacts, dict) else {},
                )
            if time.monotonic() >= deadline:
                if cancel_sent:
                    raise AwxError(
                        f"AWX job {job_id} still {status or 'unknown'} {cancel_grace:g} s "
                        "after it was asked to cancel: look at it in AWX"
                    )
                raise AwxError(
                    f"AWX job {job_id} still {status or 'unknown'} after {timeout:g} s "
                    "(it is left running; cancel it or wait longer)"
                )
            pause = min(self.poll_interval, max(0.0, deadline - time.monotonic()))
            if cancel is not None and not cancel_sent:
                cancel.wait(pause)
            else:
                time.sleep(pause)


def _json_or_empty(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _variable_names(needed: Any) -> list[str]:
    """Names from AWX's ``variables_needed_to_start`` ("'name' value missing" strings)."""
    names = []
    for item in needed if isinstance(needed, list) else [needed]:
        text = str(item)
        if text.count("'") >= 2:
            text = text.split("'")[1]
        names.append(text)
    return names
