"""The test run's background lane (tests/lane.py): jobs run one at a time in order, a
waiting test gets the result or the job's exception, a job nobody queued runs inline, and
stopping the lane cancels the running command's whole process group and runs its
cleanup."""

from __future__ import annotations

import io
import os
import sys
import threading
import time
from pathlib import Path

import pytest
from lane import Command, Job, Lane, junit_verdict

from harness import group_gone, wait_until

pytestmark = pytest.mark.unit


def test_jobs_run_in_order_one_at_a_time_and_results_reach_the_waiter(tmp_path: Path):
    lane = Lane(tmp_path / "lane")
    ran: list[str] = []
    busy = threading.Lock()

    def job(name: str):
        def run(say):
            assert busy.acquire(blocking=False), "two lane jobs ran at once"
            try:
                ran.append(name)
                say(f"{name} working")
                time.sleep(0.05)
                if name == "bad":
                    raise ValueError("the job's own error")
                return name.upper()
            finally:
                busy.release()
        return run

    lane.start([Job("b", job("b"), order=2), Job("bad", job("bad"), order=3),
                Job("a", job("a"), order=1)])
    shown = io.StringIO()
    assert lane.result("b", lambda: pytest.fail("b is queued"), show=shown) == "B"
    with pytest.raises(ValueError, match="the job's own error"):
        lane.result("bad", lambda: pytest.fail("bad is queued"))
    assert lane.result("a", lambda: pytest.fail("a is queued")) == "A"
    assert ran == ["a", "b", "bad"]
    assert "b working" in (tmp_path / "lane" / "b.log").read_text()
    # not queued: made and run here
    assert lane.result("c", lambda: Job("c", lambda say: "inline")) == "inline"
    lane.stop()


def test_stop_cancels_the_running_command_and_its_children_and_runs_cleanup(tmp_path: Path):
    marker = tmp_path / "cleaned"
    # a shell with a child that would outlive a plain kill of the shell
    cmd = Command([sys.executable, "-c",
                   "import subprocess,time; subprocess.Popen(['sleep','300']); "
                   "print('started', flush=True); time.sleep(300)"],
                  cwd=tmp_path, env=dict(os.environ), timeout=600,
                  cleanup=["touch", str(marker)])
    lane = Lane(tmp_path / "lane")
    lane.start([Job("long", cmd.run, cancel=cmd.cancel), Job("never", lambda say: "ran")])
    # the output line, not the command line the log starts with (which quotes it)
    assert wait_until(lambda: "\nstarted\n" in (tmp_path / "lane" / "long.log").read_text(), 30)
    pgid = cmd.proc.pid
    closed = io.StringIO()
    closed.close()  # pytest's capture of stderr is closed by the time a run is interrupted
    lane.stop(report=closed)
    assert marker.exists()
    assert wait_until(lambda: group_gone(pgid), 10)
    assert lane.jobs["never"].future.cancelled()


def test_a_command_past_its_timeout_is_terminated(tmp_path: Path):
    cmd = Command(["sleep", "300"], cwd=tmp_path, env=dict(os.environ), timeout=0.5)
    started = time.monotonic()
    rc, _ = cmd.run(lambda line: None)
    assert rc != 0 and time.monotonic() - started < 30




def test_a_command_that_fails_runs_its_cleanup_and_one_that_passes_does_not(tmp_path: Path):
    """A scenario killed from outside (not through the lane) exits non-zero without its
    own destroy: the cleanup runs after any failure."""
    for argv, cleaned in ((["false"], True), (["true"], False)):
        marker = tmp_path / f"cleaned-{argv[0]}"
        cmd = Command(argv, cwd=tmp_path, env=dict(os.environ), timeout=60,
                      cleanup=["touch", str(marker)])
        cmd.run(lambda line: None)
        assert marker.exists() is cleaned


def test_a_child_run_s_verdicts_are_read_from_its_junit_report(tmp_path: Path):
    xml = tmp_path / "child.xml"
    xml.write_text('<testsuites><testsuite><testcase name="test_ok"/>'
                   '<testcase name="test_bad"><failure message="assert 1 == 2">tb</failure>'
                   '</testcase><testcase name="test_skip"><skipped message="no nft"/></testcase>'
                   '</testsuite></testsuites>')
    assert junit_verdict(xml, "test_ok") == ("passed", "")
    assert junit_verdict(xml, "test_bad") == ("failure", "assert 1 == 2\ntb")
    assert junit_verdict(xml, "test_skip")[0] == "skipped"
    assert junit_verdict(xml, "test_missing") is None
    assert junit_verdict(tmp_path / "none.xml", "test_ok") is None


def test_what_a_finished_job_left_is_removed_when_no_test_took_it(tmp_path: Path):
    """The demo keeps its fleet for its tests; a run stopped before they ran left the fleet
    and its controller behind (CI, after a SIGTERM). A job whose result was taken is the
    taker's to clean, and one that was never run has nothing to remove."""
    lane = Lane(tmp_path / "lane")
    released: list[str] = []
    jobs = [Job(key, lambda say, key=key: key, order=i,
                release=lambda key=key: released.append(key))
            for i, key in enumerate(("kept", "taken"))]
    lane.start(jobs)
    assert lane.result("taken", lambda: pytest.fail("taken is queued")) == "taken"
    assert wait_until(jobs[0].future.done, 10)
    lane.stop(io.StringIO())
    assert released == ["kept"]
