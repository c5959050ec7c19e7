"""Request limits before the body is read (issue 12 item 1): the controller's app, driven at
the ASGI level, refuses a request without a client certificate before reading any of its
body and cuts a streamed body off at its route's limit, so neither reaches a handler; and
every route of the app has a policy that agrees with the identity it needs."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from unittest import mock

import pytest
from fastapi.routing import APIRoute

from aegis_controller.api.app import create_app
from aegis_controller.api.limits import DEFAULT_BODY_LIMIT, POLICIES, policy_for
from aegis_protocol import routes

pytestmark = pytest.mark.unit

CHUNK = 64 * 1024
UPLOAD = 32 * 1024 * 1024  # "endless": far above every limit, bounded for the test


class Upload:
    """A large body sent in chunks, counting how much of it the server asked for."""

    def __init__(self, total: int = UPLOAD) -> None:
        self.calls = 0
        self.read = 0
        self.total = total

    async def receive(self) -> dict[str, Any]:
        self.calls += 1
        if self.read >= self.total:
            return {"type": "http.disconnect"}
        self.read += CHUNK
        return {"type": "http.request", "body": b"{" * CHUNK,
                "more_body": self.read < self.total}


def _call(app: Any, path: str, upload: Upload, *, cn: str | None,
          headers: list[tuple[bytes, bytes]] | None = None, method: str = "POST"
          ) -> tuple[int, dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": method, "scheme": "https", "path": path, "raw_path": path.encode(),
             "root_path": "", "query_string": b"", "headers": headers or [],
             "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8443),
             "state": {"peer_cn": cn, "peer_serial": 7 if cn else None}}
    asyncio.run(app(scope, upload.receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], json.loads(body or b"{}")


@pytest.fixture
def controller() -> mock.Mock:
    return mock.Mock()


def test_no_certificate_is_refused_before_any_body_is_read(controller: mock.Mock) -> None:
    app = create_app(controller)
    for path in (routes.EVENTS, routes.CERTIFICATE, routes.ORDERS, routes.order_ack("1")):
        upload = Upload()
        status, body = _call(app, path, upload, cn=None,
                             headers=[(b"content-length", str(300 * 1024 * 1024).encode())])
        assert status == 401 and "client certificate" in body["detail"], (path, body)
        assert upload.calls == 0, path
    controller.intake.store.assert_not_called()


def test_a_streamed_body_is_cut_off_at_its_route_limit(controller: mock.Mock) -> None:
    app = create_app(controller)
    limit = policy_for(routes.EVENTS).body_limit
    upload = Upload()  # chunked: no content-length
    status, body = _call(app, routes.EVENTS, upload, cn="web1")
    assert status == 413 and f"at most {limit} bytes" in body["detail"]
    assert upload.read <= limit + CHUNK and upload.calls <= limit // CHUNK + 1
    controller.intake.store.assert_not_called()


def test_a_declared_length_over_the_limit_is_refused_unread(controller: mock.Mock) -> None:
    app = create_app(controller)
    upload = Upload()
    status, body = _call(app, routes.ENROLL, upload, cn=None,
                         headers=[(b"content-length", str(300 * 1024 * 1024).encode())])
    assert status == 413 and "too large" in body["detail"] and upload.calls == 0
    controller.enrollment.enroll.assert_not_called()


def test_requests_within_the_limits_reach_their_handler(controller: mock.Mock) -> None:
    app = create_app(controller)
    status, body = _call(create_app(controller), "/healthz", Upload(0), cn=None, method="GET")
    assert status == 200 and body == {"status": "ok"}
    status, _ = _call(app, routes.EVENTS, Upload(CHUNK), cn="web1")
    assert status == 422  # read whole, then refused by the model: the limit let it through


def test_every_route_has_a_policy_that_matches_its_identity() -> None:
    app = create_app(mock.Mock())
    identity = {"node_identity", "operator_identity", "console_identity"}
    for route in app.routes:
        if not isinstance(route, APIRoute):
            continue
        assert route.path in POLICIES, f"{route.path}: add its policy to api.limits.POLICIES"
        needs = any(d.call is not None and d.call.__name__ in identity
                    for d in route.dependant.dependencies)
        assert POLICIES[route.path].needs_certificate == needs, route.path
    assert policy_for("/v1/nowhere").needs_certificate
    assert policy_for("/v1/nowhere").body_limit == DEFAULT_BODY_LIMIT


def test_a_large_real_heartbeat_fits_its_route() -> None:
    """A node with 20,000 packages and 5,000 services (the model's bounds) can still send
    its inventory: the heartbeat's limit is sized for it, not for an empty heartbeat."""
    from aegis_protocol.enrollment import Heartbeat, Inventory

    inventory = Inventory(os="Debian GNU/Linux 12 (bookworm)", kernel="6.1.0-18-amd64",
                          packages={f"lib-package-name-{i:05d}-dev": f"1:2.{i}.3-4+deb12u1"
                                    for i in range(20000)},
                          services={f"service-unit-name-{i:04d}.service": "active"
                                    for i in range(5000)})
    body = Heartbeat(node_id="web1", boot_id="b" * 36, inventory=inventory,
                     inventory_digest=inventory.digest()).model_dump_json().encode()
    assert len(body) > 16 * 1024
    assert len(body) < policy_for(routes.HEARTBEAT).body_limit
