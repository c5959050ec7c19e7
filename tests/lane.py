"""The background lane: long, self-contained jobs of a test run (the EE build, the bake,
the Molecule scenarios — one of them a QEMU VM under TCG) start as soon as the run is
collected and run one after another beside the tests, so the run takes the longest of the
two lanes instead of their sum on this machine's two cores.

A job is a callable given a ``say`` function for its progress lines; they go to the job's
log file. The test or fixture that needs a job's result waits for it and, while it waits,
shows the job's log as it grows. A job nobody scheduled (the lane is off, or the test was
picked after collection) runs inline on demand, so every test also runs on its own.
``AEGIS_TEST_LANE=0`` turns the lane off.

On interrupt the queued jobs are dropped and the running one is cancelled (a subprocess
job's process group is terminated and its own cleanup command run) before the run's
leftover check."""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from concurrent.futures import Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import pytest

Say = Callable[[str], None]
KEEP_RUNS = 5


@dataclass
class Job:
    """``run(say)`` returns the job's result; ``order`` places it in the lane (low first)."""

    key: str
    run: Callable[[Say], Any]
    order: int = 100
    #: called (from the main thread) to stop the job while it runs
    cancel: Callable[[], None] | None = None
    log: Path | None = None
    #: undoes what a finished job left for its test (the demo keeps its fleet for the
    #: test to look at): called when the lane stops and no test took the result
    release: Callable[[], None] | None = None
    taken: bool = False
    future: Future = field(default_factory=Future)
    started: float | None = None
    seconds: float | None = None


class Lane:
    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.jobs: dict[str, Job] = {}
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._running: Job | None = None
        self._stopping = False

    # -- scheduling -------------------------------------------------------------------
    def start(self, jobs: Sequence[Job]) -> None:
        """Queue ``jobs`` (by ``order``) and start the lane's thread."""
        if not jobs:
            return
        self.log_dir.mkdir(parents=True, exist_ok=True)
        runs = sorted((d for d in self.log_dir.parent.iterdir() if d.is_dir()),
                      key=lambda d: d.stat().st_mtime)
        for old in runs[:-KEEP_RUNS]:  # the logs of the last few runs stay for a look
            shutil.rmtree(old, ignore_errors=True)
        for job in sorted(jobs, key=lambda j: j.order):
            job.log = self.log_dir / f"{job.key.replace(':', '-').replace('/', '-')}.log"
            job.log.write_text("")
            self.jobs[job.key] = job
            self._queue.put(job)
        self._queue.put(None)
        self._thread = threading.Thread(target=self._work, name="aegis-lane", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            if self._stopping or not job.future.set_running_or_notify_cancel():
                continue
            self._running = job
            job.started = time.monotonic()
            assert job.log is not None
            with job.log.open("a", buffering=1) as out:
                try:
                    result = job.run(_writer(out))
                except BaseException as exc:  # handed to the waiting test
                    job.seconds = time.monotonic() - job.started
                    job.future.set_exception(exc)
                else:
                    job.seconds = time.monotonic() - job.started
                    job.future.set_result(result)
            self._running = None

    # -- results ----------------------------------------------------------------------
    def result(self, key: str, make: Callable[[], Job], show: TextIO | None = None) -> Any:
        """The result of job ``key``: waited for if the lane has it (its log copied to
        ``show`` as it grows), else ``make()``'s job run here and now."""
        job = self.jobs.get(key)
        if job is None:
            job = make()
            return job.run(_writer(show) if show else _writer(sys.stderr))
        assert job.log is not None
        job.taken = True  # from here on, what the job left is the test's to remove
        if show and job.future.done():
            show = None  # finished in the background: its log stays in the file
        if show:
            show.write(f"\nlane: waiting for {key} (log {job.log})\n")
        with job.log.open(errors="replace") as log:
            while True:
                done = bool(wait([job.future], timeout=1.0).done)
                if show and (data := log.read()):
                    show.write(data)
                    show.flush()
                if done:
                    break
        if show:
            show.write(f"lane: {key} done in {job.seconds or 0:.0f} s\n")
            show.flush()
        return job.future.result()

    # -- stopping ---------------------------------------------------------------------
    def stop(self, report: TextIO | None = None) -> None:
        """Drop queued jobs, cancel the running one and wait for the lane to end. Lines go
        to the process's own stderr (pytest's capture may be closed by now)."""
        out = report or sys.__stderr__
        self._stopping = True
        for job in self.jobs.values():
            job.future.cancel()
        running = self._running
        if running is not None and running.cancel is not None:
            _say(out, f"\nlane: cancelling {running.key}")
            running.cancel()
        if self._thread is not None and self._thread.is_alive():
            if running is not None:
                _say(out, f"lane: waiting for {running.key} to end")
            self._thread.join()
        for job in self.jobs.values():
            if (job.release is not None and not job.taken and job.future.done()
                    and not job.future.cancelled()):
                _say(out, f"lane: no test took {job.key}'s result: removing what it left")
                try:
                    job.release()
                except Exception as exc:  # the leftover check that follows names what is left
                    _say(out, f"lane: removing what {job.key} left failed: {exc}")


def _say(out: TextIO | None, line: str) -> None:
    with contextlib.suppress(ValueError, OSError, AttributeError):  # closed or no stderr
        out.write(line + "\n")  # type: ignore[union-attr]
        out.flush()  # type: ignore[union-attr]


def _writer(out: TextIO) -> Say:
    def say(line: str) -> None:
        out.write(line.rstrip("\n") + "\n")
        out.flush()
    return say


@dataclass
class Command:
    """A job that is one command: its output (stdout and stderr merged) goes to the job's
    log; the result is ``(returncode, output)``. Cancelling terminates its process group
    and runs ``cleanup`` (e.g. the scenario's own destroy), which also runs after any
    failure (a signal from outside may have cut the command's own clean-up short)."""

    argv: list[str]
    cwd: Path
    env: dict[str, str]
    timeout: float
    cleanup: list[str] | None = None
    #: seconds between SIGTERM and SIGKILL (a command that unwinds what it made needs more)
    grace: float = 30
    proc: subprocess.Popen | None = None
    cancelled: bool = False

    def run(self, say: Say) -> tuple[int, str]:
        say("$ " + " ".join(self.argv))
        lines: list[str] = []
        self.proc = subprocess.Popen(self.argv, cwd=self.cwd, env=self.env, text=True,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        timer = threading.Timer(self.timeout, self._terminate)
        timer.start()
        try:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                lines.append(line)
                say(line)
            rc = self.proc.wait()
        finally:
            timer.cancel()
        if (self.cancelled or rc != 0) and self.cleanup:  # killed from outside, too
            say("$ " + " ".join(self.cleanup))
            done = subprocess.run(self.cleanup, cwd=self.cwd, env=self.env, text=True,
                                  capture_output=True, timeout=600, check=False)
            say(done.stdout + done.stderr)
        return rc, "".join(lines)

    def _terminate(self) -> None:
        self.cancelled = True
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=self.grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def cancel(self) -> None:
        self._terminate()

    def clean(self) -> None:
        """Run ``cleanup`` now (for a job whose result no test took)."""
        if self.cleanup:
            subprocess.run(self.cleanup, cwd=self.cwd, env=self.env, text=True,
                           capture_output=True, timeout=600, check=False)


def result_shown(lane: Lane, config: pytest.Config, key: str, make: Callable[[], Job]) -> Any:
    """``lane.result`` with the job's log shown past pytest's output capture."""
    capture = config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        return lane.result(key, make, show=sys.stderr)


class LaneOutcome(pytest.Item):
    """A test that a child pytest in the lane runs: it passes, fails or skips here as it
    did there (the child's JUnit XML), with the child's message."""

    def __init__(self, *, lane: Lane, key: str, xml: Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.lane, self.key, self.xml = lane, key, xml

    def runtest(self) -> None:
        rc, output = result_shown(self.lane, self.config, self.key,
                                  lambda: pytest.fail("not queued"))
        verdict = junit_verdict(self.xml, self.name)
        if verdict is None:
            pytest.fail(f"the child run did not report {self.name} (exit {rc}):\n{output[-4000:]}")
        kind, text = verdict
        if kind == "skipped":
            pytest.skip(text)
        if kind != "passed":
            pytest.fail(f"{kind} in the child run:\n{text[-8000:]}", pytrace=False)

    def reportinfo(self):
        return self.path, None, self.name


def junit_verdict(xml: Path, name: str) -> tuple[str, str] | None:
    """``(passed|failure|error|skipped, message)`` of test ``name`` in a JUnit XML report,
    or None when it is not there."""
    if not xml.is_file():
        return None
    for case in ET.parse(xml).iter("testcase"):  # noqa: S314 (the child run's own report)
        if case.get("name") != name:
            continue
        for kind in ("failure", "error", "skipped"):
            found = case.find(kind)
            if found is not None:
                return kind, f"{found.get('message', '')}\n{found.text or ''}"
        return "passed", ""
    return None
