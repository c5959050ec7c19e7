"""Commands of an SSH grant's session: the exec monitor's events tied to the grant whose
certificate opened the session.

The exec monitor names, in each exec record, the sshd session (monitor) process above the
exec'ing process (``ssh_pid``, as its PID namespace sees it; ``ssh_pid_outer`` the next
one up). sshd (LogLevel VERBOSE or INFO) logs each login from that very process:

    sshd[4242]: Accepted publickey for root from 10.0.0.9 port 50812 ssh2:
        ED25519-CERT SHA256:... ID adam@aegis-access/<request id> (serial 77) CA ...

:class:`SshSessions` follows that log (syslog's file format, /var/log/auth.log) and marks
each exec event of such a session with the grant's request id and the certificate's
serial (``aegis_protocol.access.SESSION_GRANT`` / ``SESSION_SERIAL``); the controller puts
the command on the ledger under the grant. The log line is written when the login is
accepted, before the session runs anything, so reading the log's new lines just before a
batch of exec events is tagged finds every session that batch can belong to.

    sessions = SshSessions(Path("/var/log/auth.log"))
    events = sessions.tag(events)   # refreshes from the log, then marks
    to_events = sessions.marking(ExecDecoder(offset, ids).events)   # the daemon's exec path
"""

from __future__ import annotations

import logging
import os
import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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


class SshSessions:
    """sshd's log followed from where it was last read (a rotated or truncated log is
    read from its start), and the sessions it names by sshd pid."""

    def __init__(self, log_file: Path, max_sessions: int = MAX_SESSIONS) -> None:
        self.log_file = Path(log_file)
        self.max_sessions = max_sessions
        self.sessions: OrderedDict[int, Session] = OrderedDict()
        self._ino: int | None = None
        self._offset = 0
        self._partial = b""

    def refresh(self) -> None:
        try:
            with self.log_file.open("rb") as f:
                st = os.fstat(f.fileno())
                if st.st_ino != self._ino or st.st_size < self._offset:
                    first = self._ino is None
                    self._ino, self._partial = st.st_ino, b""
                    self._offset = max(0, st.st_size - START_TAIL) if first else 0
                if st.st_size == self._offset:
                    return
                f.seek(self._offset)
                data = f.read()
        except OSError as e:
            log.warning("sshd log unreadable: %s", e, extra={"file": str(self.log_file)})
            return
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        for raw in lines:
            parsed = parse_line(raw.decode(errors="replace"))
            if parsed is None:
                continue
            pid, session = parsed
            self.sessions.pop(pid, None)
            if session is not None:
                self.sessions[pid] = session
                while len(self.sessions) > self.max_sessions:
                    self.sessions.popitem(last=False)

    def tag(self, events: list[Event]) -> list[Event]:
        """``events`` with each exec of a grant's session marked (in place: the exec
        decoder's data dicts are fresh per event and not yet spooled)."""
        if not any("ssh_pid" in ev.data for ev in events):
            return events
        self.refresh()
        for ev in events:
            for key in ("ssh_pid", "ssh_pid_outer"):
                pid = ev.data.get(key)
                session = self.sessions.get(pid) if isinstance(pid, int) else None
                if session is not None:
                    ev.data[SESSION_GRANT] = session.request_id
                    ev.data[SESSION_SERIAL] = session.serial
                    break
        return events

    def marking(self, decode: Callable[[list[tuple[int, bytes]]], list[Event]]
                ) -> Callable[[list[tuple[int, bytes]]], list[Event]]:
        """``decode`` (ring records to events) followed by :meth:`tag`."""
        def to_events(records: list[tuple[int, bytes]]) -> list[Event]:
            return self.tag(decode(records))
        return to_events
