"""Mutual TLS identity for the API: uvicorn's h11 protocol, extended to put the verified
client certificate's CN and serial into the request state (``request.state.peer_cn``,
``request.state.peer_serial``).

The TLS layer verifies the certificate against the controller's CA (client certificates
are optional at that layer, since enrollment has none); routes that need an identity
read it from here — never from a header.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.h11_impl import H11Protocol


def peer_identity(transport: asyncio.BaseTransport) -> tuple[str | None, int | None]:
    """(CN, serial) of the verified client certificate, or (None, None)."""
    ssl_object = transport.get_extra_info("ssl_object")
    cert = ssl_object.getpeercert() if ssl_object is not None else None
    if not cert:
        return None, None
    serial = int(str(cert.get("serialNumber", "0")), 16)
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value), serial
    return None, serial


class MtlsH11Protocol(H11Protocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        cn, serial = peer_identity(transport)
        self.app_state = {**self.app_state, "peer_cn": cn, "peer_serial": serial}
