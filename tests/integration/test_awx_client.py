"""The AWX client over real HTTP on loopback, against an AWX stand-in (AWX itself cannot
run here). The stand-in answers only the endpoints the client uses, with the shapes of
AWX's API v2; it is not AWX, and nothing here shows the client works with a real one."""

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from aegis_controller.awx import AwxClient, AwxError

pytestmark = pytest.mark.integration

TOKEN = "awx-test-token-3f9c1d7e"  # noqa: S105 - the stand-in's own token
PAGE_SIZE = 2


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

    TEMPLATES = {7: "recover-node", 8: "recover-broken", 9: "no-prompt", 10: "slow", 11: "survey"}

    def make_events(self, job_id: int, failed: bool) -> list[dict[str, Any]]:
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
                "event_data": {"host": "node-2"} if name.startswith("runner_") else {},
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
        if template == 11:
            return 400, {
                "extra_vars": ["Variables incident provided, but not allowed by the survey."]
            }
        with self.lock:
            self.next_id += 1
            job_id = self.next_id
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


@pytest.fixture
def stand_in() -> Iterator[tuple[StandInAwx, str]]:
    awx = StandInAwx()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(awx))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield awx, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_launch_streams_events_in_order_across_pages_until_successful(stand_in) -> None:
    awx, url = stand_in
    seen: list[dict[str, Any]] = []
    with AwxClient(url, TOKEN, poll_interval=0.01) as client:
        job_id = client.launch("recover-node", {"node": "node-2"})
        result = client.wait(job_id, seen.append, timeout=10)
    assert result.status == "successful" and not result.failed
    assert [e["counter"] for e in seen] == [1, 2, 3, 4, 5, 6, 7]  # each once, in order
    assert [e["event"] for e in seen][-2:] == ["runner_on_ok", "playbook_on_stats"]
    assert seen[3]["event_data"]["host"] == "node-2" and seen[0]["stdout"].startswith("line 1")
    assert result.events_seen == 7
    assert awx.jobs[job_id].extra_vars == {"node": "node-2"}
    # the name was looked up, then the template launched by id
    assert ("GET", "/api/v2/job_templates/", {"name": "recover-node"}) in awx.requests
    assert any(r[:2] == ("POST", "/api/v2/job_templates/7/launch/") for r in awx.requests)
    # three new events a poll and two a page: the client followed AWX's `next` links
    pages = {r[2].get("page") for r in awx.requests if r[1].endswith("/job_events/")}
    assert "2" in pages
    # later polls asked only for what was new
    sinces = [int(r[2]["counter__gt"]) for r in awx.requests if r[1].endswith("/job_events/")]
    assert sinces == sorted(sinces) and max(sinces) >= 3


def test_failed_job(stand_in) -> None:
    _, url = stand_in
    seen: list[str] = []
    with AwxClient(url, TOKEN, poll_interval=0.01) as client:
        result = client.wait(
            client.launch(8, {"node": "node-2"}), lambda e: seen.append(e["event"])
        )
    assert result.status == "failed" and result.failed
    assert "runner_on_failed" in seen


def test_cancel(stand_in) -> None:
    awx, url = stand_in
    with AwxClient(url, TOKEN, poll_interval=0.01) as client:
        job_id = client.launch("slow")
        assert client.status(job_id)["status"] == "running"
        client.cancel(job_id)
        result = client.wait(job_id, timeout=10)
    assert result.status == "canceled" and result.failed
    assert ("POST", f"/api/v2/jobs/{job_id}/cancel/", {}) in awx.requests


def test_cancel_of_a_finished_job_is_refused(stand_in) -> None:
    _, url = stand_in
    with AwxClient(url, TOKEN, poll_interval=0.01) as client:
        job_id = client.launch(8)
        client.wait(job_id, timeout=10)
        with pytest.raises(AwxError) as err:
            client.cancel(job_id)
    assert str(err.value) == f'AWX cancel job {job_id}: HTTP 405 Method "POST" not allowed.'


def test_bad_token_is_one_line_without_the_token(stand_in) -> None:
    _, url = stand_in
    bad = "wrong-token-5e2a"
    with AwxClient(url, bad) as client, pytest.raises(AwxError) as err:
        client.launch(7, {"node": "node-2"})
    message = str(err.value)
    assert err.value.status == 401
    assert message.startswith("AWX launch job template 7: HTTP 401 Authentication credentials")
    assert "\n" not in message and bad not in message and TOKEN not in message
    assert bad not in repr(client) and bad not in repr(err.value)


def test_variables_needed_to_start_are_named(stand_in) -> None:
    awx, url = stand_in
    with AwxClient(url, TOKEN) as client, pytest.raises(AwxError) as err:
        client.launch("recover-node", {"reason": "exec of an unknown binary"})
    assert err.value.status == 400 and err.value.variables == ("node",)
    assert str(err.value) == (
        "AWX launch job template 7: HTTP 400 variables needed to start: node "
        "(pass them in extra_vars)"
    )
    assert not awx.jobs, "no job was created"


def test_extra_vars_the_template_ignores_cancel_the_job_and_are_named(stand_in) -> None:
    awx, url = stand_in
    with AwxClient(url, TOKEN) as client, pytest.raises(AwxError) as err:
        client.launch("no-prompt", {"node": "node-2", "incident": 12})
    assert err.value.variables == ("incident", "node")
    assert str(err.value).startswith(
        "AWX launch job template 9: extra_vars not allowed by the template, "
        "AWX ignored incident, node (job "
    )
    (job,) = awx.jobs.values()
    assert job.canceled, "the job AWX started without the variables is canceled"


def test_extra_vars_refused_with_400_are_named(stand_in) -> None:
    awx, url = stand_in
    with AwxClient(url, TOKEN) as client, pytest.raises(AwxError) as err:
        client.launch("survey", {"incident": 12})
    assert err.value.status == 400 and err.value.variables == ("incident",)
    assert str(err.value).startswith(
        "AWX launch job template 11: HTTP 400 extra_vars refused (incident): extra_vars: "
        "Variables incident provided, but not allowed by the survey."
    )
    assert not awx.jobs


def test_unknown_template_name(stand_in) -> None:
    _, url = stand_in
    with (
        AwxClient(url, TOKEN) as client,
        pytest.raises(AwxError, match="no job template of that name"),
    ):
        client.launch("no-such-template")


def test_timeout_leaves_the_job_and_says_so(stand_in) -> None:
    awx, url = stand_in
    seen: list[int] = []
    with AwxClient(url, TOKEN, poll_interval=0.05) as client:
        job_id = client.launch(10)
        with pytest.raises(AwxError) as err:
            client.wait(job_id, lambda e: seen.append(e["counter"]), timeout=0.3)
    assert str(err.value) == (
        f"AWX job {job_id} still running after 0.3 s (it is left running; cancel it or wait longer)"
    )
    assert seen == sorted(set(seen)) and seen, "events streamed while waiting"
    assert not awx.jobs[job_id].canceled


def test_unreachable_awx_and_bad_settings() -> None:
    with pytest.raises(AwxError, match="must start with http"):
        AwxClient("awx.example.com", TOKEN)
    with pytest.raises(AwxError, match="token is empty"):
        AwxClient("http://127.0.0.1:9", "")
    with (
        AwxClient("http://127.0.0.1:9", TOKEN, timeout=2) as client,
        pytest.raises(AwxError) as err,
    ):
        client.status(1)
    assert "cannot reach http://127.0.0.1:9" in str(err.value) and TOKEN not in str(err.value)
