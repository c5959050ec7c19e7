"""The AWX client over real HTTP on loopback, against the AWX stand-in (tests/awx_standin.py:
AWX itself cannot run here). The stand-in answers only the endpoints the client uses, with
the shapes of AWX's API v2; it is not AWX, and nothing here shows the client works with a
real one."""

from collections.abc import Iterator
from typing import Any

import awx_standin
import pytest
from awx_standin import StandInAwx, serve_standin

from aegis_controller.awx import AwxClient, AwxError

pytestmark = pytest.mark.integration

TOKEN = awx_standin.TOKEN


@pytest.fixture
def stand_in() -> Iterator[tuple[StandInAwx, str]]:
    with serve_standin() as (awx, url):
        yield awx, url


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
