"""The console's failures are pages: a bug in a page handler is a 500 page that names no
detail of the exception (the log has it); the API's own routes keep their JSON. The
client certificate's identity is put in the request state as the TLS layer does
(``api.tls``): a stand-in for the handshake, since these are about the answer's shape."""

from __future__ import annotations

from typing import Any
from unittest import mock

from fastapi.testclient import TestClient

from aegis_controller.api.app import create_app


def _client() -> TestClient:
    app = create_app(mock.Mock())

    @app.get("/console/boom")
    def boom() -> None:
        raise RuntimeError("secret-detail")

    @app.get("/v1/boom")
    def api_boom() -> None:
        raise RuntimeError("secret-detail")

    async def with_identity(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope["state"] = {"peer_cn": "operator:alice", "peer_serial": 1}
        await app(scope, receive, send)

    return TestClient(with_identity, raise_server_exceptions=False)


def test_a_failing_console_page_is_a_500_page_without_the_exception() -> None:
    with _client() as c:
        r = c.get("/console/boom")
        assert r.status_code == 500
        assert r.headers["content-type"].startswith("text/html")
        assert "its log has the details" in r.text
        assert "secret-detail" not in r.text and "Traceback" not in r.text
        r = c.get("/console/boom", headers={"accept": "application/json"})
        assert r.status_code == 500 and "secret-detail" not in r.text
        r = c.get("/v1/boom")
        assert r.status_code == 500 and r.headers["content-type"] == "application/json"
        assert "secret-detail" not in r.text
