"""Commands of an SSH grant's session: the exec monitor's events tied to the grant whose
certificate opened the session.

The exec monitor names, in each exec record, the sshd session (monitor) process above the
exec'ing process (``ssh_pid``, as its PID namespace sees it; ``ssh_pid_outer`` the next
one up). sshd (LogLevel VERBOSE or INFO) logs each login from that very process:

    sshd[4242]: Accepted publickey for root from 10.0.0.9 port 50812 ssh2:
        ED25519-CERT SHA256:... ID adam@aegis-access/<request id> (serial 77) CA ...

:class:`SshSessions` follows that log (syslog's file format, /var/log/auth.log, or
systemd's journal through ``journalctl``: :mod:`aegis_agent.journal_follower`) and marks
each exec event of such a session with the grant's request id and the certificate's
serial (``aegis_protocol.access.SESSION_GRANT`` / ``SESSION_SERIAL``); the controller puts
the command on the ledger under the grant. sshd writes the line when the login is
accepted and at once runs the session, but the line reaches the log through syslog or
journald, so a scripted ``ssh host cmd`` can exec before the log has it: a batch with an
exec of an sshd pid the log has not named yet re-reads the log for a short bounded wait
(``WAIT``) before it is marked.

    sessions = SshSessions(Path("/var/log/auth.log"))
    events = sessions.tag(events)   # refreshes from the log, then marks
    to_events = sessions.marking(ExecDecoder(offset, ids).events)   # the daemon's exec path
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from aegis_protocol.access import SESSION_GRANT, SESSION_SERIAL, request_of_key_id
from aegis_protocol.events import Event

log = logging.getLogger(__name__)

_ACCEPTED = re.compile(
    r"sshd(?:-session)?\[(?P<pid>\d+)\]: Accepted (?P<method>\S+) for (?P<user>\S+) from "
    r"\S+ port \d+ \S+?(?::(?P<rest>.*))?$")
_CERT = re.compile(r"-CERT \S+ ID (?P<key_id>\S+) \(serial (?P<serial>\d+)\) CA ")
#: sessions remembered (by sshd pid): the oldest are forgotten past this
MAX_SESSIONS = 4096
#: the tail of a larger log read at start (older sessions are over)
START_TAIL = 8 << 20
#: the longest a batch waits for the log to name its execs' sshd pids, and how often the
#: log is re-read meanwhile (seconds)
WAIT, STEP = 0.2, 0.01


@dataclass(frozen=True)
class Session:
    request_id: str
    serial: str
    key_id: str
    user: str


def parse_line(line: str) -> tuple[int, Session | None] | None:
    """(sshd pid, the grant's session or None) for an ``Accepted`` line — None for a login
    without an Aegis grant's certificate, which ends what that pid meant before (a pid
    reused) — or None for any other line."""
    m = _ACCEPTED.search(line)
    if m is None:
        return None
    pid = int(m["pid"])
    cert = _CERT.search(m["rest"] or "")
    if cert is None:
        return pid, None
    request_id = request_of_key_id(cert["key_id"])
    if request_id is None:
        return pid, None
    return pid, Session(request_id, cert["serial"], cert["key_id"], m["user"])


class LogFile:
    """sshd's log in syslog's file format followed from where it was last read (a
    rotated or truncated log is read from its start; a larger log's tail at the first
    read)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._ino: int | None = None
        self._offset = 0
        self._partial = b""

    def lines(self) -> list[str]:
        """The complete lines written since the last call."""
        try:
            with self.path.open("rb") as f:
                st = os.fstat(f.fileno())
                if st.st_ino != self._ino or st.st_size < self._offset:
                    first = self._ino is None
                    self._ino, self._partial = st.st_ino, b""
                    self._offset = max(0, st.st_size - START_TAIL) if first else 0
                if st.st_size == self._offset:
                    return []
                f.seek(self._offset)
                data = f.read()
        except OSError as e:
            log.warning("sshd log unreadable: %s", e, extra={"file": str(self.path)})
            return []
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        return [raw.decode(errors="replace") for raw in lines]

    def close(self) -> None:
        pass


class LineSource(Protocol):
    def lines(self) -> list[str]: ...

    def close(self) -> None: ...


class SshSessions:
    """The sessions sshd's log (a :class:`LogFile`, or the journal through a
    :class:`~aegis_agent.journal_follower.JournalFollower`) names by sshd pid.

    sshd logs a login and at once runs the session: its first execs can come before the
    log's reader has the line. So a batch with an exec whose sshd pid the log has not
    named yet re-reads the log every ``step`` seconds for at most ``wait`` seconds in all
    before it is marked; a pid still not named then is not waited for again (a session
    older than what was read at start) and its execs are counted in ``unmatched``."""

    def __init__(self, source: Path | LineSource, max_sessions: int = MAX_SESSIONS,
                 wait: float = WAIT, step: float = STEP) -> None:
        self.source: LineSource = LogFile(source) if isinstance(source, Path) else source
        self.max_sessions = max_sessions
        self.wait, self.step = wait, step
        #: every sshd pid the log named: its grant's session, or None (another login)
        self.named: OrderedDict[int, Session | None] = OrderedDict()
        #: pids waited for in vain (not waited for again)
        self.missed: OrderedDict[int, None] = OrderedDict()
        #: execs left unmarked because the log never named their sshd pid
        self.unmatched = 0
        #: batches that waited for the log, and the seconds spent waiting
        self.waits = 0
        self.waited_s = 0.0

    @property
    def sessions(self) -> dict[int, Session]:
        """The grants' sessions by sshd pid."""
        return {pid: s for pid, s in self.named.items() if s is not None}

    def refresh(self) -> None:
        for line in self.source.lines():
            parsed = parse_line(line)
            if parsed is None:
                continue
            pid, session = parsed
            self.named.pop(pid, None)
            self.named[pid] = session
            while len(self.named) > self.max_sessions:
                self.named.popitem(last=False)

    def _unnamed(self, pids: set[int]) -> set[int]:
        return {p for p in pids if p not in self.named and p not in self.missed}

    def tag(self, events: list[Event]) -> list[Event]:
        """``events`` with each exec of a grant's session marked (in place: the exec
        decoder's data dicts are fresh per event and not yet spooled)."""
        inner = {ev.data["ssh_pid"] for ev in events
                 if isinstance(ev.data.get("ssh_pid"), int)}
        if not inner:
            return events
        self.refresh()
        if self._unnamed(inner):
            start = time.monotonic()
            deadline = start + self.wait
            while self._unnamed(inner) and (left := deadline - time.monotonic()) > 0:
                time.sleep(min(self.step, left))
                self.refresh()
            self.waits += 1
            self.waited_s += time.monotonic() - start
            for pid in self._unnamed(inner):
                self.missed[pid] = None
                while len(self.missed) > self.max_sessions:
                    self.missed.popitem(last=False)
        for ev in events:
            pid = ev.data.get("ssh_pid")
            if not isinstance(pid, int):
                continue
            if pid not in self.named:
                self.unmatched += 1
            for key in ("ssh_pid", "ssh_pid_outer"):
                session = self.named.get(ev.data.get(key))  # type: ignore[arg-type]
                if session is not None:
                    ev.data[SESSION_GRANT] = session.request_id
                    ev.data[SESSION_SERIAL] = session.serial
                    break
        return events

    def status(self) -> dict[str, object]:
        return {"named": len(self.named), "grant_sessions": len(self.sessions),
                "unmatched": self.unmatched, "waits": self.waits,
                "waited_s": round(self.waited_s, 3)}

    def close(self) -> None:
        self.source.close()

    def marking(self, decode: Callable[[list[tuple[int, bytes]]], list[Event]]
                ) -> Callable[[list[tuple[int, bytes]]], list[Event]]:
        """``decode`` (ring records to events) followed by :meth:`tag`."""
        def to_events(records: list[tuple[int, bytes]]) -> list[Event]:
            return self.tag(decode(records))
        return to_events
