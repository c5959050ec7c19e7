"""The agent's reader of sshd's lines in systemd's journal (aegis_agent.journal_follower),
driven here by a stand-in for ``journalctl --follow`` (a shell script: this host has no
journald; tests/e2e/test_ssh_journal.py reads a real node's journal): its lines are read
without blocking, a line written in two parts is whole once, a child that ends is
restarted after its delay, and closing the follower ends the child."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aegis_agent import journal_follower
from aegis_agent.journal_follower import JournalFollower, journalctl_command
from aegis_agent.ssh_sessions import SshSessions
from aegis_protocol.events import Event
from harness import wait_until

pytestmark = pytest.mark.unit

LINE = ("Dec 07 14:00:00 node1 sshd[4242]: Accepted publickey for root from 10.0.0.9 "
        "port 50812 ssh2: ED25519 SHA256:AbC")


def stand_in(tmp_path: Path, body: str) -> list[str]:
    """A stand-in for journalctl: a script that prints what ``body`` says."""
    script = tmp_path / "journalctl-stand-in"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    return [str(script)]


def test_the_command_follows_sshds_identifiers_in_syslog_format() -> None:
    cmd = journalctl_command(start_lines=50)
    assert cmd[:5] == ["journalctl", "--follow", "--lines=50", "--output=short",
                       "--no-pager"]
    assert cmd[-4:] == ["-t", "sshd", "-t", "sshd-session"]


def test_lines_are_read_without_blocking_and_close_ends_the_child(tmp_path: Path) -> None:
    f = JournalFollower(stand_in(tmp_path, f"printf '{LINE}\\nDec 07 14:00:01 no'\n"
                                           "sleep 0.3\nprintf 'de1 x\\n'\nexec sleep 600\n"))
    got: list[str] = []
    assert wait_until(lambda: bool(got.extend(f.lines()) or got), 10)
    assert got == [LINE]  # the half line waits for its end
    assert wait_until(lambda: bool(got.extend(f.lines()) or len(got) == 2), 10)
    assert got[1] == "Dec 07 14:00:01 node1 x"
    assert f.proc is not None
    pid = f.proc.pid
    f.close()
    assert f.proc is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_child_that_ends_is_restarted_after_its_delay(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    monkeypatch.setattr(journal_follower, "BACKOFF_FIRST", 0.2)
    f = JournalFollower(stand_in(tmp_path, f"echo '{LINE}'\n"))
    got: list[str] = []
    assert wait_until(lambda: bool(got.extend(f.lines()) or f.starts >= 3), 20, step=0.05)
    assert got.count(LINE) >= 2  # each start reads the newest lines again
    f.close()


def test_sessions_from_the_journal(tmp_path: Path) -> None:
    s = SshSessions(JournalFollower(stand_in(tmp_path, f"sleep 0.05\necho '{LINE}'\n"
                                                       "exec sleep 600\n")), wait=5.0)
    try:
        ev = s.tag([journal_exec(4242)])[0]
    finally:
        s.close()
    assert 4242 in s.named and s.named[4242] is None  # a login without a grant
    assert s.unmatched == 0 and ev.data["ssh_pid"] == 4242


def journal_exec(ssh_pid: int) -> Event:
    return Event(ts_ns=1, kind="exec", data={"pid": 9, "ssh_pid": ssh_pid})


def test_a_missing_journalctl_is_retried_not_raised(tmp_path: Path) -> None:
    f = JournalFollower([str(tmp_path / "no-such-journalctl")])
    assert f.lines() == [] and f.proc is None and f.starts == 0
    assert f._next_start > time.monotonic()


def test_the_child_ends_when_the_agent_is_killed(tmp_path: Path) -> None:
    """SIGKILL gives the agent no time to close the follower: the kernel sends the child
    SIGTERM (PR_SET_PDEATHSIG), so no journalctl is left behind."""
    cmd = stand_in(tmp_path, "exec sleep 600\n")  # writes nothing: no SIGPIPE to end it
    agent = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\n"
         "from aegis_agent.journal_follower import JournalFollower\n"
         f"f = JournalFollower({cmd!r})\nf.lines()\n"
         "print(f.proc.pid, flush=True)\ntime.sleep(600)\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert agent.stdout is not None
        child = int(agent.stdout.readline())
        comm = Path(f"/proc/{child}/comm")
        assert wait_until(lambda: comm.read_text().strip() == "sleep", 10)  # running
    finally:
        agent.kill()
        agent.wait()

    def gone() -> bool:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return True
        # not reaped by us: a zombie of init's until reaped counts as gone
        return Path(f"/proc/{child}/stat").read_text().split(") ", 1)[1][0] == "Z"
    try:
        assert wait_until(gone, 10)
    finally:  # left behind (the test failed): end it here
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
