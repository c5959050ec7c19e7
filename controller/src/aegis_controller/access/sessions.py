"""Commands of an SSH grant's session on the ledger: one ``session_command`` step per
command under the grant (``access:<request id>``), with the grant's user identity, the
node, the file executed and the start of its argv (``args``, 255 bytes at most), pid,
parent pid, uid and the time the node's kernel saw it.

The node's agent marks the exec events of a session with the grant's request id and the
certificate's serial (``aegis_protocol.access.SESSION_GRANT`` / ``SESSION_SERIAL``, see
``aegis_agent.ssh_sessions``); a mark is taken only when the serial is the grant's
certificate and the node is one the grant reached — an agent cannot attach commands to
another node's grant. Commands that arrive after the grant ended are still its
session's (an early revoke refuses new logins; a session already open runs on).

One record per command, not per batch: a session's record is read command by command,
and each one is checked against the chain on its own. Bounded: at most ``cap`` records
per grant and minute (by the kernel's time of the command); past it the commands are
counted and one ``session_commands_capped`` record says how many more ran in that
minute, written when a later minute of the grant starts or by :meth:`flush` (the
controller's periodic task), so a runaway session (a loop of 10,000 execs) adds
``cap`` + 1 records a minute, not 10,000. The counts are the controller process's own:
a restart mid-minute may let up to ``cap`` more through for that minute.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from aegis_protocol.access import SESSION_GRANT, SESSION_SERIAL
from aegis_protocol.events import Event

from .. import tables
from ..ledger import Kind, Ledger, Recorder
from .identity import User

#: session_command records per grant and minute; beyond, a count
CAP_PER_MINUTE = 120
_r = tables.access_requests.c
_e = tables.access_edges.c


@dataclass
class _Minute:
    minute: int  # start, unix seconds
    written: int = 0
    more: int = 0
    node: str = ""
    user: dict[str, Any] = field(default_factory=dict)


class SessionCommands:
    """Marked exec events in, ledger records out (see the module's docstring)."""

    def __init__(self, ledger: Ledger, cap: int = CAP_PER_MINUTE) -> None:
        self.ledger = ledger
        self.cap = cap
        self._minutes: dict[str, _Minute] = {}  # request id -> its current minute
        self._lock = threading.Lock()

    def events(self, node_id: str, events: Sequence[Event]) -> None:
        """The intake's batch listener: the batch's newly stored events."""
        marked = [ev for ev in events if ev.kind in ("exec", "exec_denied")
                  and isinstance(ev.data.get(SESSION_GRANT), str)]
        if not marked:
            return
        with self._lock, self.ledger.recording() as rec:
            grants: dict[str, Any] = {}
            for ev in marked:
                request_id = str(ev.data[SESSION_GRANT])
                if request_id not in grants:
                    grants[request_id] = self._grant(rec, node_id, request_id)
                row = grants[request_id]
                if row is None or str(ev.data.get(SESSION_SERIAL)) != row.ssh_serial:
                    continue
                self._command(rec, node_id, request_id, row, ev)

    def flush(self, now_ns: int) -> int:
        """Summary records of the minutes that ended before ``now_ns``; how many."""
        with self._lock:
            ended = {rid: m for rid, m in self._minutes.items()
                     if (m.minute + 60) * 10**9 <= now_ns}
            for rid in ended:
                del self._minutes[rid]
            capped = {rid: m for rid, m in ended.items() if m.more}
            if capped:
                with self.ledger.recording() as rec:
                    for rid, m in capped.items():
                        self._summary(rec, rid, m)
        return len(capped)

    # -- internals ------------------------------------------------------------------------
    @staticmethod
    def _grant(rec: Recorder, node_id: str, request_id: str) -> Any:
        """The ssh grant ``request_id`` if it reached ``node_id``, else None."""
        return rec.conn.execute(
            sa.select(_r.request_id, _r.ssh_serial, _r.sub, _r.user_name, _r.groups)
            .join(tables.access_edges, _e.request_id == _r.request_id)
            .where(_r.request_id == request_id, _e.node_id == node_id,
                   _r.ssh_serial.is_not(None)).limit(1)).first()

    def _command(self, rec: Recorder, node_id: str, request_id: str, row: Any,
                 ev: Event) -> None:
        minute = ev.ts_ns // 10**9 // 60 * 60
        m = self._minutes.get(request_id)
        if m is None or minute > m.minute:
            if m is not None:
                self._summary(rec, request_id, m)
            m = self._minutes[request_id] = _Minute(minute)
        m.node = node_id
        m.user = User(sub=row.sub, name=row.user_name,
                      groups=tuple(json.loads(row.groups))).ledger()
        if m.written >= self.cap:
            m.more += 1
            return
        m.written += 1
        d = ev.data
        rec.append(Kind.ACCESS_GRANT, f"access:{request_id}", {
            "event": "session_command", "user": m.user, "node": node_id,
            "filename": d.get("filename"), "args": d.get("args"), "comm": d.get("comm"),
            "pid": d.get("pid"),
            "ppid": d.get("ppid"), "uid": d.get("uid"), "at_ns": ev.ts_ns,
            "ssh_serial": row.ssh_serial, "denied": ev.kind == "exec_denied",
            "agent_event": str(ev.id)}, actor=f"node:{node_id}")

    @staticmethod
    def _summary(rec: Recorder, request_id: str, m: _Minute) -> None:
        if not m.more:
            return
        rec.append(Kind.ACCESS_GRANT, f"access:{request_id}", {
            "event": "session_commands_capped", "user": m.user, "node": m.node,
            "minute": m.minute, "recorded": m.written, "more": m.more,
            "summary": f"{m.more} more commands in this minute"}, actor=f"node:{m.node}")
