"""The agent's control socket as the client sees it: the line format and ``call``.

    {"cmd": "grant", "args": {"edge": "10.0.0.1 -> 10.0.0.2 tcp/22", "ttl": 60}}
    {"ok": true, "result": {...}}  |  {"ok": false, "error": "what was wrong"}

The commands are the verbs of ``aegis_protocol.commands`` (their models check the args);
the daemon serves them in ``control_server``. The socket is root-only: 0600 in a 0700
directory, and the daemon checks the peer's uid with SO_PEERCRED.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from aegis_protocol.commands import ENFORCEMENT_VERBS, QUERY_VERBS

MAX_LINE = 1 << 20
COMMANDS = QUERY_VERBS + ENFORCEMENT_VERBS


class ControlError(RuntimeError):
    """The daemon could not be reached, or refused the request (message says why)."""


def parse_request(line: bytes) -> tuple[str, dict[str, Any]]:
    """Validate one request line; ValueError with a message that says what to send."""
    try:
        req = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"request is not JSON ({e}); send one JSON object per line, "
                         'e.g. {"cmd": "status"}') from None
    if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
        raise ValueError('request must be a JSON object with a "cmd" string, '
                         'e.g. {"cmd": "status"}')
    if req["cmd"] not in COMMANDS:
        raise ValueError(f"unknown command {req['cmd']!r}; known: {', '.join(COMMANDS)}")
    args = req.get("args", {})
    if not isinstance(args, dict):
        raise ValueError('"args" must be a JSON object')
    extra = set(req) - {"cmd", "args"}
    if extra:
        raise ValueError(f"unknown request keys: {', '.join(sorted(extra))}")
    return req["cmd"], args


def call(path: str | Path, cmd: str, /, timeout: float = 10.0, **args: Any) -> Any:
    """Send one request to the daemon; returns its result or raises ControlError."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except FileNotFoundError:
        raise ControlError(f"the agent is not running (no control socket at {path}); "
                           "start it with `systemctl start aegis-agent` or `aegis-agent run`"
                           ) from None
    except PermissionError:
        raise ControlError(f"permission denied on {path}: the control socket is root-only"
                           ) from None
    except OSError as e:
        raise ControlError(f"cannot reach the agent at {path}: {e.strerror or e}") from None
    with sock:
        sock.sendall(json.dumps({"cmd": cmd, "args": args}).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
            if len(buf) > 64 * MAX_LINE:
                raise ControlError("answer from the agent is too large")
    if not buf:
        raise ControlError("the agent closed the connection without an answer")
    answer = json.loads(buf)
    if not answer.get("ok"):
        raise ControlError(answer.get("error", "request refused"))
    return answer.get("result")
