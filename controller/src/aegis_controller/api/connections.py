"""Connection guards for the HTTP server (uvicorn's h11 protocol has none for these): a
deadline for reading each request, head and body, a cap on open connections per source
address and one on all connections, so slow or half-open clients cannot hold the
controller's file descriptors.

* read deadline: from the connection's start, and again after each response, the next
  request must arrive whole within ``read_timeout`` seconds or the connection is closed
  (a request whose body is in, being handled, is never cut off);
* ``per_source``: connections beyond it from one address are closed at once;
* ``max_connections``: connections beyond it are closed at once (``LimitNOFILE`` in the
  systemd unit leaves room above it); at it, uvicorn answers 503.

The TLS handshake comes before any of this and is bounded by the same ``read_timeout``
(``serve`` sets asyncio's handshake deadline, 60 s by default).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass

import h11

from .tls import MtlsH11Protocol

log = logging.getLogger("aegis_controller.api.connections")


@dataclass(frozen=True)
class ConnectionLimits:
    read_timeout: float = 15.0
    per_source: int = 64
    max_connections: int = 4096

    def __post_init__(self) -> None:
        if self.read_timeout <= 0 or self.per_source < 1 or self.max_connections < 1:
            raise ValueError(f"connection limits must be positive: {self}")


def guarded_protocol(limits: ConnectionLimits) -> type[MtlsH11Protocol]:
    """A protocol class for ``uvicorn.Config(http=...)`` enforcing ``limits``; one per
    server (it holds the server's count of connections per source)."""
    per_source: Counter[str] = Counter()

    class GuardedH11Protocol(MtlsH11Protocol):
        _source: str | None = None
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            source = self.client[0] if self.client else "?"
            if len(self.connections) > limits.max_connections:
                log.warning("connection refused: server at its connection limit",
                            extra={"source": source, "limit": limits.max_connections})
                transport.close()
                return
            if per_source[source] >= limits.per_source:
                log.warning("connection refused: too many from one source",
                            extra={"source": source, "limit": limits.per_source})
                transport.close()
                return
            self._source = source
            per_source[source] += 1
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if self._source is not None:
                per_source[self._source] -= 1
                if per_source[self._source] <= 0:
                    del per_source[self._source]
                self._source = None
            super().connection_lost(exc)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()  # the next request gets its own deadline

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(limits.read_timeout, self._expired)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expired(self) -> None:
            self._deadline = None
            if self.conn.their_state is h11.DONE or self.transport.is_closing():
                return  # the request is in: the handler's time is not a read timeout
            log.info("connection closed: request not received within the read timeout",
                     extra={"source": self._source, "timeout_s": limits.read_timeout})
            self.transport.close()

    return GuardedH11Protocol
