"""The controller's edge against hostile clients, over real TLS to a live `aegis-controller
serve` on loopback (issue 12 items 1 and 2): an upload without a client certificate is
refused before its body is read, an oversized streamed body is cut off at its route's
limit, and half-open connections neither starve real clients nor stay open."""

from __future__ import annotations

import select
import socket
import ssl
import time
from collections.abc import Iterator

import pytest

from aegis_protocol import routes
from harness_controller import Node, Server, controller_server, enroll, new_node

pytestmark = pytest.mark.integration

CHUNK = 64 * 1024


@pytest.fixture
def live(run_prefix: str) -> Iterator[Server]:
    with controller_server(f"{run_prefix}edge", None) as srv:
        yield srv


def _tls(server: Server, node: Node | None = None) -> ssl.SSLSocket:
    ctx = server.ca
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2  # no session tickets: readable = answered
    if node is not None and node.cert_file is not None:
        ctx.load_cert_chain(node.cert_file, node.key_file)
    raw = socket.create_connection((server.host, server.port), timeout=20)
    return ctx.wrap_socket(raw, server_hostname=server.host)


def _status(sock: ssl.SSLSocket) -> tuple[int, bytes]:
    """The status and body of the answer (the server closes after a refusal)."""
    data = b""
    while True:
        try:
            part = sock.recv(65536)
        except (ConnectionResetError, ssl.SSLError):
            break
        if not part:
            break
        data += part
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def _upload(sock: ssl.SSLSocket, head: bytes, chunk: bytes, most: int) -> int:
    """Send ``head`` then ``chunk`` repeatedly, up to ``most`` bytes, until the server
    answers or stops reading; return how many body bytes went out."""
    sock.sendall(head)
    sent = 0
    while sent < most:
        if select.select([sock], [], [], 0)[0] or sock.pending():
            break
        try:
            sock.sendall(chunk)
        except OSError:  # the server answered and closed: what we want
            break
        sent += len(chunk)
    return sent


def test_an_upload_without_a_certificate_is_refused_unread(live: Server) -> None:
    head = (f"POST {routes.EVENTS} HTTP/1.1\r\nHost: {live.host}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {300 * 1024 * 1024}\r\n\r\n").encode()
    with _tls(live) as sock:
        sent = _upload(sock, head, b"[" * CHUNK, 4 * 1024 * 1024)
        status, body = _status(sock)
    assert status == 401 and b"client certificate" in body
    assert sent < 300 * 1024 * 1024


def test_an_oversized_streamed_body_is_cut_off(live: Server) -> None:
    node = new_node(live, "edge1")
    assert enroll(live, node, live.token("edge1")).status_code == 200
    head = (f"POST {routes.EVENTS} HTTP/1.1\r\nHost: {live.host}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
    chunk = f"{CHUNK:x}\r\n".encode() + b"[" * CHUNK + b"\r\n"
    most = 64 * 1024 * 1024
    started = time.monotonic()
    with _tls(live, node) as sock:
        sent = _upload(sock, head, chunk, most)
        status, body = _status(sock)
    assert status == 413 and b"too large" in body, body
    assert sent < most, "the controller kept reading past the events route's limit"
    assert time.monotonic() - started < 60
    with node.client(live) as c:  # and it still serves
        assert c.get(routes.NODE_SELF).status_code == 200
