"""The controller's edge against hostile clients, over real TLS to a live `aegis-controller
serve` on loopback (issue 12 items 1 and 2): an upload without a client certificate is
refused before its body is read, an oversized streamed body is cut off at its route's
limit, and half-open connections neither starve real clients nor stay open."""

from __future__ import annotations

import select
import signal
import time
from collections.abc import Iterator

import httpx
import pytest

from aegis_protocol import routes
from harness_controller import (
    Server,
    closed,
    controller_server,
    enroll,
    new_node,
    raw_tls,
    read_answer,
    upload,
)

pytestmark = pytest.mark.integration

CHUNK = 64 * 1024


@pytest.fixture
def live(run_prefix: str) -> Iterator[Server]:
    with controller_server(f"{run_prefix}edge", None) as srv:
        yield srv


def test_an_upload_without_a_certificate_is_refused_unread(live: Server) -> None:
    head = (f"POST {routes.EVENTS} HTTP/1.1\r\nHost: {live.host}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {300 * 1024 * 1024}\r\n\r\n").encode()
    with raw_tls(live) as sock:
        sent = upload(sock, head, b"[" * CHUNK, 4 * 1024 * 1024)
        status, body = read_answer(sock)
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
    with raw_tls(live, node) as sock:
        sent = upload(sock, head, chunk, most)
        status, body = read_answer(sock)
    assert status == 413 and b"too large" in body, body
    assert sent < most, "the controller kept reading past the events route's limit"
    assert time.monotonic() - started < 60
    with node.client(live) as c:  # and it still serves
        assert c.get(routes.NODE_SELF).status_code == 200


def test_half_open_connections_do_not_starve_clients_and_areclosed(live: Server) -> None:
    live.kill(signal.SIGTERM)
    live.start("--read-timeout", "4", "--per-source", "20")
    attacker = "127.0.0.2"  # one source on loopback; the real client comes from 127.0.0.1
    half_open = []
    for i in range(50):
        try:
            sock = raw_tls(live, source=attacker)
            sock.sendall(b"POST /v1/ev" if i % 2 else  # half a request line, or half a body
                         f"POST {routes.ENROLL} HTTP/1.1\r\nHost: x\r\n"
                         "Content-Length: 100\r\n\r\n{".encode())
        except OSError:
            continue  # refused at once by the per-source cap: fine
        half_open.append(sock)
    with httpx.Client(base_url=live.url, verify=live.ca, timeout=20) as real:
        assert real.get("/healthz").status_code == 200
    deadline = time.monotonic() + 90  # a bound, not a timing claim: the timeout is 4 s
    waiting = set(half_open)
    while waiting and time.monotonic() < deadline:
        ready, _, _ = select.select(list(waiting), [], [], 1)
        waiting -= {s for s in ready if closed(s)}
    for sock in half_open:
        sock.close()
    assert not waiting, f"{len(waiting)} half-open connections were still open"
    log = (live.state / "serve.log").read_text()
    assert log.count("too many from one source") == 30, log[-2000:]


def test_connections_that_never_finish_the_tls_handshake_are_closed(live: Server) -> None:
    """A client that connects and never sends its TLS hello is closed after the read
    timeout too, not after asyncio's default 60 s (the guards above only see a connection
    once its handshake is done)."""
    import socket

    live.kill(signal.SIGTERM)
    live.start("--read-timeout", "3")
    silent = [socket.create_connection((live.host, live.port), timeout=5,
                                       source_address=("127.0.0.3", 0)) for _ in range(20)]
    try:
        deadline = time.monotonic() + 40  # a bound below asyncio's 60 s, not a timing claim
        waiting = set(silent)
        while waiting and time.monotonic() < deadline:
            ready, _, _ = select.select(list(waiting), [], [], 1)
            for sock in ready:
                try:
                    gone = sock.recv(1) == b""
                except OSError:
                    gone = True
                if gone:
                    waiting.discard(sock)
        assert not waiting, f"{len(waiting)} of 20 silent connections were still open"
        with httpx.Client(base_url=live.url, verify=live.ca, timeout=20) as real:
            assert real.get("/healthz").status_code == 200
    finally:
        for sock in silent:
            sock.close()
