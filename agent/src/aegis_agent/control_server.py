"""The daemon's side of the control socket: serve one JSON request per line to root only.

Each line is checked (``control.parse_request``), its arguments are parsed with the verb's
model (``aegis_protocol.commands``), enforcement verbs go to
:class:`~aegis_agent.enforcement.Enforcement` with source ``cli``, and the queries
(status, edges, events, ping) and ``confirm`` are answered here. The socket is 0600 in a
0700 directory and the peer's uid is checked with SO_PEERCRED; a line longer than
``MAX_LINE`` is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aegis_protocol.commands import ENFORCEMENT_VERBS, parse

from .bpf.edges import EdgeSpecError
from .bpf.syscall import BpfError
from .control import MAX_LINE, parse_request
from .enforcement import Enforcement
from .spool import Spool


def peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


class ControlServer:
    def __init__(self, path: Path, enforcement: Enforcement, spool: Spool,
                 status: Callable[[], dict[str, object]],
                 confirm: Callable[[], dict[str, object]] | None = None) -> None:
        self.path = path
        self.enforcement = enforcement
        self.spool = spool
        self.status = status
        self.confirm = confirm
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.path.parent, 0o700)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._client, str(self.path),
                                                           limit=MAX_LINE)
        finally:
            os.umask(old)

    def close(self) -> None:
        if self._server:
            self._server.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _client(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        try:
            if peer_uid(writer.get_extra_info("socket")) != 0:
                await _answer(writer, {"ok": False, "error": "the control socket is root-only"})
                return
            while line := await reader.readline():
                await _answer(writer, self.answer(line))
        except (asyncio.LimitOverrunError, ValueError):
            await _answer(writer, {"ok": False, "error": "request line too long"})
        except ConnectionError:
            pass
        finally:
            writer.close()

    def answer(self, line: bytes) -> dict[str, Any]:
        """The answer to one request line: ``{"ok": true, "result": …}`` or the error."""
        try:
            cmd, args = parse_request(line)
            return {"ok": True, "result": self.handle(cmd, args)}
        except (ValueError, TypeError, EdgeSpecError, BpfError, OSError) as e:
            return {"ok": False, "error": str(e)}

    def handle(self, cmd: str, args: dict[str, Any]) -> Any:
        """One request; raises ValueError (and friends) with what was wrong."""
        command = parse(cmd, args)
        if command.verb in ENFORCEMENT_VERBS:
            return self.enforcement.run(command, "cli").result
        if command.verb == "ping":
            return "pong"
        if command.verb == "status":
            return self.status()
        if command.verb == "edges":
            return self.enforcement.edges()
        if command.verb == "confirm":
            if self.confirm is None:
                raise ValueError("this agent has no segment policy to confirm")
            return self.confirm()
        after = command.after
        if after is None:
            after = max(-1, self.spool.next_seq - command.limit - 1)
        return [{"seq": seq, **json.loads(e.model_dump_json())}
                for seq, e in self.spool.read(after, command.limit)]


async def _answer(writer: asyncio.StreamWriter, answer: dict) -> None:
    writer.write(json.dumps(answer, default=str).encode() + b"\n")
    await writer.drain()
