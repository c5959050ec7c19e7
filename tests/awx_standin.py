"""An AWX STAND-IN (AWX itself cannot run here): a ``http.server`` on 127.0.0.1 that answers
only the endpoints :class:`aegis_controller.awx.AwxClient` uses, with the shapes of AWX's
API v2. It is not AWX, and nothing tested against it shows the client or the recovery
engine's AWX backend works with a real one.

Templates 7-11 are the client's cases (see :class:`StandInAwx`); 21-25 ``aegis-contain``,
``aegis-collect``, ``aegis-replace``, ``aegis-verify``, ``aegis-enroll`` play the recovery
steps' job templates: they prompt for variables, need ``aegis_target``, and hand back with
``set_stats`` (the job's ``artifacts``) what the engine expects of each step. A test makes
one of them fail (``fail``) or run until canceled (``hold``)."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

TOKEN = "awx-test-token-3f9c1d7e"  # noqa: S105 - the stand-in's own token
PAGE_SIZE = 2


#: The recovery steps' job templates.
RECOVERY = {21: "aegis-contain", 22: "aegis-collect", 23: "aegis-replace", 24: "aegis-verify",
            25: "aegis-enroll"}
#: The golden record the stand-in verify template hands back.
GOLDEN = json.dumps({"golden": {"/etc/aegis/awx-standin": "1" * 64}, "units": {}})


def recovery_result(name: str, node: str, extra: dict[str, Any]) -> dict[str, Any]:
    """What the stand-in recovery template ``name`` hands back for ``node``."""
    if name == "aegis-collect":
        return {"bundle_path": f"/var/lib/awx/forensics/{node}-{extra['forensics_incident']}"
                               ".tar.age",
                "bundle_sha256": hashlib.sha256(f"awx bundle of {node}".encode()).hexdigest(),
                "bundle_bytes": 8192}
    if name == "aegis-replace":
        return {"old_instance_id": f"awx-{node}-old", "new_instance_id": f"awx-{node}-new"}
    if name == "aegis-verify":
        return {"golden": GOLDEN}
    if name == "aegis-enroll":
        return {"enrolled": True}
    return {"quarantine_mode": "soft"}


def _event_data(name: str, counter: int, host: str, play: str, failed: bool,
                message: str) -> dict[str, Any]:
    if name == "playbook_on_play_start":
        return {"play": play}
    if not name.startswith("runner_"):
        return {}
    data: dict[str, Any] = {"host": host, "task": f"task {counter // 2}"}
    if failed and name == "runner_on_failed":
        data["res"] = {"msg": message or "task failed", "changed": False}
    return data


@dataclass
class StandInJob:
    id: int
    template: int
    extra_vars: dict[str, Any]
    # statuses the job reports on successive polls; the last one sticks
    script: list[str]
    events: list[dict[str, Any]]
    polls: int = 0
    canceled: bool = False
    artifacts: dict[str, Any] = field(default_factory=dict)  # set_stats: once it ended

    def status(self) -> str:
        if self.canceled:
            return "canceled"
        status = self.script[min(self.polls, len(self.script) - 1)]
        self.polls += 1
        return status

    def visible_events(self) -> list[dict[str, Any]]:
        # events appear as the job runs: three more per poll, all once it has ended
        if self.canceled or self.polls >= len(self.script):
            return self.events
        return self.events[: 3 * self.polls]


@dataclass
class StandInAwx:
    """AWX stand-in: a ``http.server`` on 127.0.0.1 speaking a small part of AWX's API v2.

    Templates: 7 "recover-node" (prompts for variables, needs ``node``; its jobs succeed),
    8 "recover-broken" (its jobs fail), 9 "no-prompt" (does not prompt for variables: AWX
    drops extra_vars into ``ignored_fields``), 10 "slow" (runs until canceled), 11 "survey"
    (a survey that refuses variables it does not define, 400 on ``extra_vars``).
    """

    jobs: dict[int, StandInJob] = field(default_factory=dict)
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    next_id: int = 100
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: recovery templates (by name) whose jobs fail, with the failed task's message
    fail: dict[str, str] = field(default_factory=dict)
    #: recovery templates (by name) whose jobs run until canceled
    hold: set[str] = field(default_factory=set)

    TEMPLATES = {7: "recover-node", 8: "recover-broken", 9: "no-prompt", 10: "slow", 11: "survey",
                 **RECOVERY}

    def launched(self) -> list[tuple[str, dict[str, Any]]]:
        """The jobs launched, in order: (template name, extra_vars)."""
        return [(self.TEMPLATES[j.template], j.extra_vars)
                for _, j in sorted(self.jobs.items())]

    def recovery_job(self, job_id: int, template: int,
                     extra: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]], dict]:
        """A recovery template's job: its status script, events and artifacts."""
        name = self.TEMPLATES[template]
        node = extra["aegis_target"]
        error = self.fail.get(name)
        if name in self.hold:
            script = ["pending", "running"]
        else:
            script = ["pending", "running", "failed" if error else "successful"]
        events = self.make_events(job_id, error is not None, host=node, play=name,
                                  message=error or "")
        return script, events, {"aegis_result": recovery_result(name, node, extra)}

    def make_events(self, job_id: int, failed: bool, host: str = "node-2", play: str = "",
                    message: str = "") -> list[dict[str, Any]]:
        names = ["playbook_on_start", "playbook_on_play_start"]
        names += ["playbook_on_task_start", "runner_on_ok", "playbook_on_task_start"]
        names += ["runner_on_failed" if failed else "runner_on_ok", "playbook_on_stats"]
        return [
            {
                "id": job_id * 1000 + counter,
                "type": "job_event",
                "job": job_id,
                "counter": counter,
                "event": name,
                "event_data": _event_data(name, counter, host, play, failed, message),
                "host_name": host if name.startswith("runner_") else "",
                "task": f"task {counter // 2}" if counter > 2 else "",
                "changed": name == "runner_on_ok" and counter == 6,
                "failed": failed and name == "runner_on_failed",
                "stdout": f"line {counter} ({name})",
                "start_line": counter - 1,
                "end_line": counter,
            }
            for counter, name in enumerate(names, start=1)
        ]

    def launch(self, template: int, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        extra = body.get("extra_vars") or {}
        if isinstance(extra, str):
            extra = json.loads(extra)
        if template == 7 and "node" not in extra:
            return 400, {"variables_needed_to_start": ["'node' value missing"]}
        if template in RECOVERY and "aegis_target" not in extra:
            return 400, {"variables_needed_to_start": ["'aegis_target' value missing"]}
        if template == 11:
            return 400, {
                "extra_vars": ["Variables incident provided, but not allowed by the survey."]
            }
        with self.lock:
            self.next_id += 1
            job_id = self.next_id
        if template in RECOVERY:
            script, events, artifacts = self.recovery_job(job_id, template, extra)
            job = StandInJob(job_id, template, extra, script, events, artifacts=artifacts)
        else:
            failed = template == 8
            script = {
                7: ["pending", "running", "running", "successful"],
                8: ["pending", "running", "failed"],
                9: ["pending", "running", "successful"],
                10: ["running"],
            }[template]
            job = StandInJob(job_id, template, extra, script, self.make_events(job_id, failed))
        self.jobs[job_id] = job
        answer: dict[str, Any] = {"job": job_id, "id": job_id, "type": "job", "status": "pending"}
        answer["ignored_fields"] = {"extra_vars": extra} if template == 9 and extra else {}
        return 201, answer


def _handler(awx: StandInAwx) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # quiet
            pass

        def _send(self, status: int, body: dict[str, Any] | None) -> None:
            data = json.dumps(body).encode() if body is not None else b""
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _route(self, method: str) -> None:
            parts = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            awx.requests.append((method, parts.path, query))
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                self._send(401, {"detail": "Authentication credentials were not provided."})
                return
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}") if length else {}
            seg = [s for s in parts.path.split("/") if s]  # api, v2, ...
            if method == "GET" and seg == ["api", "v2", "job_templates"]:
                found = [
                    {"id": tid, "name": name}
                    for tid, name in StandInAwx.TEMPLATES.items()
                    if name == query.get("name")
                ]
                self._send(200, {"count": len(found), "next": None, "results": found})
            elif method == "POST" and seg[2:3] == ["job_templates"] and seg[4:] == ["launch"]:
                template = int(seg[3])
                if template not in StandInAwx.TEMPLATES:
                    self._send(404, {"detail": "Not found."})
                    return
                self._send(*awx.launch(template, body))
            elif seg[2:3] == ["jobs"] and int(seg[3]) not in awx.jobs:
                self._send(404, {"detail": "Not found."})
            elif method == "GET" and seg[2:3] == ["jobs"] and len(seg) == 4:
                job = awx.jobs[int(seg[3])]
                status = job.status()
                self._send(
                    200,
                    {
                        "id": job.id,
                        "type": "job",
                        "job_template": job.template,
                        "status": status,
                        "failed": status in ("failed", "error", "canceled"),
                        "job_explanation": "Job was canceled" if job.canceled else "",
                        "extra_vars": json.dumps(job.extra_vars),
                        "artifacts": job.artifacts if status == "successful" else {},
                    },
                )
            elif method == "GET" and seg[2:3] == ["jobs"] and seg[4:] == ["job_events"]:
                job = awx.jobs[int(seg[3])]
                assert query.get("order_by") == "counter"
                since = int(query.get("counter__gt", 0))
                page = int(query.get("page", 1))
                matching = [e for e in job.visible_events() if e["counter"] > since]
                chunk = matching[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
                more = len(matching) > page * PAGE_SIZE
                nxt = (
                    f"/api/v2/jobs/{job.id}/job_events/?counter__gt={since}&order_by=counter"
                    f"&page={page + 1}"
                    if more
                    else None
                )
                self._send(200, {"count": len(matching), "next": nxt, "results": chunk})
            elif method == "POST" and seg[2:3] == ["jobs"] and seg[4:] == ["cancel"]:
                job = awx.jobs[int(seg[3])]
                if job.polls >= len(job.script) and job.script[-1] != "running":
                    self._send(405, {"detail": 'Method "POST" not allowed.'})
                    return
                job.canceled = True
                self._send(202, None)
            else:
                self._send(404, {"detail": "Not found."})

        def do_GET(self) -> None:
            self._route("GET")

        def do_POST(self) -> None:
            self._route("POST")

    return Handler


@contextmanager
def serve_standin(awx: StandInAwx | None = None) -> Iterator[tuple[StandInAwx, str]]:
    """The stand-in on 127.0.0.1 (a free port): ``(awx, base_url)``; stopped on exit."""
    awx = StandInAwx() if awx is None else awx
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(awx))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield awx, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
