"""Request limits applied before a route's body is read: an ASGI middleware that refuses a
request with no client certificate on a route that needs one (401) and a body larger
than its route allows (413), counting streamed bytes as they arrive, so an
unauthenticated or oversized upload is never buffered or parsed.

Every route's policy is in :data:`POLICIES` (a test checks that each route of the app has
one and that it agrees with the route's identity dependency); an unknown path gets the
strictest policy: a client certificate and :data:`DEFAULT_BODY_LIMIT`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from aegis_protocol import routes

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

KiB = 1024
MiB = 1024 * KiB

#: Any route not listed, and any unknown path.
DEFAULT_BODY_LIMIT = 16 * KiB


@dataclass(frozen=True)
class Policy:
    """What a route accepts before its handler runs."""

    body_limit: int = DEFAULT_BODY_LIMIT
    needs_certificate: bool = True


#: Route template → policy. Bodies: event batches and heartbeats (a changed inventory:
#: up to 20,000 packages, 5,000 services and sockets) up to a few MiB, attestation
#: reports and profiles (golden files, units, BPF programs) up to 1 MiB, the rest small.
POLICIES: dict[str, Policy] = {
    routes.ENROLL: Policy(16 * KiB, needs_certificate=False),
    routes.EVENTS: Policy(4 * MiB),
    routes.CERTIFICATE: Policy(16 * KiB),
    routes.NODE_SELF: Policy(0),
    routes.ATTEST_CHALLENGE: Policy(0),
    routes.ATTEST: Policy(1 * MiB),
    routes.HEARTBEAT: Policy(4 * MiB),
    routes.NODE_PROFILE: Policy(1 * MiB),
    routes.ORDERS: Policy(16 * KiB),
    routes.ORDER_ACK: Policy(16 * KiB),
    "/metrics": Policy(0),  # an operator's certificate (aegis_controller.metrics)
    # users of just-in-time access: a JSON Web Token as bearer, no client certificate
    routes.ACCESS: Policy(4 * KiB, needs_certificate=False),
    routes.ACCESS_ONE: Policy(0, needs_certificate=False),
    routes.ACCESS_APPROVE: Policy(4 * KiB, needs_certificate=False),
    routes.ACCESS_DENY: Policy(4 * KiB, needs_certificate=False),
    routes.ACCESS_REVOKE: Policy(4 * KiB, needs_certificate=False),
    # the operator console (aegis_controller.console): an operator's certificate; forms
    # carry a reason and the CSRF token
    "/console": Policy(0),
    "/console/": Policy(0),
    "/console/fleet": Policy(0),
    "/console/static/live.js": Policy(0),
    "/console/nodes/{node_id}": Policy(0),
    "/console/incidents": Policy(0),
    "/console/recovery": Policy(0),
    "/console/recovery/{job_id}/approve": Policy(4 * KiB),
    "/console/recovery/{job_id}/reject": Policy(4 * KiB),
    "/console/access": Policy(0),
    "/console/access/{request_id}/{verb}": Policy(4 * KiB),
    "/console/policies": Policy(0),
    "/console/ledger": Policy(0),
    "/console/ledger/verify": Policy(4 * KiB),
    "/healthz": Policy(0, needs_certificate=False),
    "/openapi.json": Policy(0, needs_certificate=False),
}

STRICTEST = Policy()


def _pattern(template: str) -> re.Pattern[str]:
    parts = re.split(r"(\{[^}/]+\})", template)
    return re.compile("".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts)
                      + "$")


_COMPILED = [(_pattern(t), p) for t, p in POLICIES.items()]


def policy_for(path: str) -> Policy:
    """The policy of the route whose template matches ``path`` (else the strictest)."""
    return next((p for pattern, p in _COMPILED if pattern.match(path)), STRICTEST)


async def refuse(send: Send, status: int, detail: str) -> None:
    """Answer with a JSON ``detail`` and close the connection (the body stays unread)."""
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class RequestLimits:
    """ASGI middleware: certificate first, then the body limit, both before the handler."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        policy = policy_for(scope["path"])
        if policy.needs_certificate and not (scope.get("state") or {}).get("peer_cn"):
            await refuse(send, 401, "this route needs a client certificate issued by the "
                                    "controller (a node's from enrollment, or an operator's "
                                    "from aegis-controller operator-cert)")
            return
        limit = policy.body_limit
        too_large = (f"request body too large: this route accepts at most {limit} bytes; "
                     "send less (smaller event batches) per request")
        declared = _declared_length(scope)
        if declared is not None and declared > limit:
            await refuse(send, 413, too_large)
            return
        received = 0
        refused = False

        async def counted_receive() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    refused = True
                    await refuse(send, 413, too_large)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not refused:  # after our 413 the handler's answer has nowhere to go
                await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not refused:
                raise
            # the handler failed on the body we cut off; the client already has its 413
