"""sshd's lines from systemd's journal, for nodes without a syslog file (Debian 12 with
journald alone has no /var/log/auth.log).

A child ``journalctl --follow`` writes sshd's entries in ``--output=short`` (syslog's
file format: ``Dec 07 14:00:00 host sshd[4242]: Accepted ...``) to a pipe the agent reads
without blocking. The child is restarted with a growing delay when it ends, is stopped
with the follower, and gets SIGTERM if the agent itself dies (PR_SET_PDEATHSIG): it is
never left behind. It runs without the agent's capabilities (the ambient set is cleared
before its exec): the journal's files are root's (0640, group systemd-journal), which
root's uid reads without any.

This module imports nothing of the agent's, so it can run alone on a node:

    follower = JournalFollower()
    lines = follower.lines()   # the complete lines written since the last call
    follower.close()
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import time
from collections.abc import Sequence

log = logging.getLogger(__name__)

#: sshd's own identifier, and OpenSSH 9.8's per-session process's
IDENTIFIERS = ("sshd", "sshd-session")
#: the journal's newest sshd lines read at start (older sessions are over)
START_LINES = 2000
#: the delay before a restart, doubled after each quick end up to the maximum
BACKOFF_FIRST, BACKOFF_MAX = 1.0, 60.0
#: a child that ran this long resets the delay
STEADY = 60.0

_PR_SET_PDEATHSIG = 1
_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
_libc = ctypes.CDLL(None, use_errno=True)  # loaded before any fork: the child only calls


def journalctl_command(journalctl: str = "journalctl", start_lines: int = START_LINES,
                       identifiers: Sequence[str] = IDENTIFIERS) -> list[str]:
    """``journalctl`` following ``identifiers``' entries (-t given more than once: any
    of them) in syslog's format, from the newest ``start_lines``."""
    return [journalctl, "--follow", f"--lines={start_lines}", "--output=short",
            "--no-pager", "--quiet", *(a for i in identifiers for a in ("-t", i))]


def _child_setup() -> None:  # between fork and exec: syscalls only
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    _libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)


class JournalFollower:
    """The lines a following child process writes, read without blocking; the child is
    (re)started when :meth:`lines` is called and it is not running and its delay is over."""

    def __init__(self, command: Sequence[str] | None = None) -> None:
        self.command = list(command) if command is not None else journalctl_command()
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._started = 0.0
        self._backoff = BACKOFF_FIRST
        self._next_start = 0.0
        self._partial = b""

    def _start(self) -> None:
        now = time.monotonic()
        if now < self._next_start:
            return
        try:
            self.proc = subprocess.Popen(self.command, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, close_fds=True,
                                         preexec_fn=_child_setup)  # noqa: PLW1509
        except OSError as e:
            log.warning("journal reader not started: %s", e,
                        extra={"command": self.command[0], "retry_s": self._backoff})
            self._delay(now)
            return
        assert self.proc.stdout is not None
        os.set_blocking(self.proc.stdout.fileno(), False)
        self.starts += 1
        self._started = now
        self._partial = b""

    def _delay(self, now: float) -> None:
        self._next_start = now + self._backoff
        self._backoff = min(self._backoff * 2, BACKOFF_MAX)

    def _ended(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        rc = self.proc.wait()
        self.proc.stdout.close()
        self.proc = None
        now = time.monotonic()
        if now - self._started >= STEADY:
            self._backoff = BACKOFF_FIRST
        log.warning("journal reader ended (exit %s); restarting in %.0f s", rc,
                    self._backoff, extra={"command": self.command[0]})
        self._delay(now)

    def lines(self) -> list[str]:
        """The complete lines written since the last call (none while the child is
        down: it is started again once its delay is over)."""
        if self.proc is None:
            self._start()
            if self.proc is None:
                return []
        assert self.proc.stdout is not None
        chunks = []
        ended = False
        while True:
            try:
                data = os.read(self.proc.stdout.fileno(), 1 << 16)
            except BlockingIOError:
                break
            if not data:
                ended = True
                break
            chunks.append(data)
        *lines, self._partial = (self._partial + b"".join(chunks)).split(b"\n")
        if ended:
            self._ended()
        return [raw.decode(errors="replace") for raw in lines]

    def close(self) -> None:
        """Stop the child (SIGTERM, then SIGKILL after a second)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(1.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
