"""ansible-runner events as the playbook wrapper sees them: recorded event dicts of two
real runs become typed events, per-task progress lines and per-host stats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aegis_controller.playbook import (
    HostStats,
    PlayEvent,
    Progress,
    progress_line,
    stats_from,
)

pytestmark = pytest.mark.unit

RECORDED = json.loads((Path(__file__).with_name("ansible_runner_events.json")).read_text())


def _lines(events: list[dict], label: str = "harden") -> list[str]:
    out: list[str] = []
    progress = Progress(label, out.append)
    for data in events:
        progress(PlayEvent.parse(data))
    return out


def test_each_task_result_becomes_one_progress_line_in_order():
    assert _lines(RECORDED["tiny_play"]) == [
        "[harden] localhost ok: Say hi (1)",
        "[harden] localhost changed: Change something (2)",
        "[harden] localhost skipped: Skip me (3)",
        "[harden] localhost failed: Fail here (4): boom",
    ]


def test_ignored_failures_and_unreachable_hosts_are_told_apart():
    lines = _lines(RECORDED["ignored_and_unreachable"], "agent")
    assert lines[0] == "[agent] web1 ignored: Fail but ignore (1)"
    assert lines[1].startswith("[agent] web1 unreachable: Reach it (2): Task failed: Failed "
                               "to connect")


def test_progress_line_shows_the_total_when_known_and_skips_non_results():
    ok = PlayEvent.parse(RECORDED["tiny_play"][4])
    assert ok.kind == "runner_on_ok" and ok.host == "localhost" and ok.task == "Say hi"
    assert progress_line("harden", ok, 12, 48) == "[harden] localhost ok: Say hi (12/48)"
    start = PlayEvent.parse(RECORDED["tiny_play"][2])
    assert start.is_task_start and progress_line("harden", start, 1) is None


def test_failures_are_failed_or_unreachable_but_not_ignored():
    events = [PlayEvent.parse(e) for e in RECORDED["ignored_and_unreachable"]]
    assert [(e.task, e.status) for e in events if e.is_failure] == [("Reach it", "unreachable")]
    failed = [PlayEvent.parse(e) for e in RECORDED["tiny_play"]]
    assert [(e.task, e.message) for e in failed if e.is_failure] == [("Fail here", "boom")]


def test_stats_per_host_from_the_runner_stats():
    raw = RECORDED["ignored_and_unreachable"][-1]["event_data"]
    assert stats_from(raw) == {"web1": HostStats(ok=1, changed=1, unreachable=1, ignored=1)}
    raw = RECORDED["tiny_play"][-1]["event_data"]
    assert stats_from(raw) == {"localhost": HostStats(ok=2, changed=1, failures=1, skipped=1)}
    assert stats_from(None) == {}
