"""Every state change commits together with its ledger record, or neither does: the
domain writes both in one transaction (``Ledger.recording``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography import x509
from fastapi.testclient import TestClient
from harness_domain import make_controller

from aegis_controller import tables
from aegis_controller.api.app import create_app
from aegis_controller.domain import Controller
from aegis_controller.ledger import Kind, Ledger
from aegis_controller.nodes import NodeState
from aegis_controller.trust import transition
from aegis_protocol import routes

pytestmark = pytest.mark.unit

EDGE = "10.0.0.1 -> 10.0.0.2 tcp/22"


@pytest.fixture
def ctl(tmp_path: Path) -> Controller:
    return make_controller(tmp_path)


def as_peer(app: Any, cn: str, serial: int | None = None) -> Any:
    """The app as a client with this verified certificate sees it (what the mutual TLS
    protocol puts into the request state)."""
    async def wrapped(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope.setdefault("state", {}).update(peer_cn=cn, peer_serial=serial)
        await app(scope, receive, send)
    return wrapped


@pytest.fixture
def operator(ctl: Controller) -> Iterator[TestClient]:
    """An operator whose certificate is on record (the API checks its serial)."""
    _key, pem = ctl.operators.issue("alice", "test")
    serial = x509.load_pem_x509_certificate(pem).serial_number
    with TestClient(as_peer(create_app(ctl), "operator:alice", serial)) as client:
        yield client


def enrolled(ctl: Controller, node_id: str = "n1") -> None:
    """A node that is ``enrolled`` (without going through TLS)."""
    ctl.enrollment.issue_token(node_id)
    ctl.nodes.move(node_id, transition(NodeState.PROVISIONING, NodeState.ENROLLED, "test"),
                   "test")


def rows(ctl: Controller, table: sa.Table) -> list[dict]:
    with ctl.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(table))]


def kinds(ctl: Controller) -> list[str]:
    return [r.kind for r in ctl.ledger.records()]


def test_an_order_with_an_infinite_number_is_refused_and_leaves_no_pending_order(
        ctl: Controller, operator: TestClient) -> None:
    enrolled(ctl)
    before = kinds(ctl)
    body = json.dumps({"node_id": "n1", "kind": "grant", "args": {"edge": EDGE, "ttl": "INF"}}
                      ).replace('"INF"', "1e999")  # what a client's JSON may say
    r = operator.post(routes.ORDERS, content=body, headers={"content-type": "application/json"})
    assert r.status_code in (400, 422), r.text
    assert "finite" in r.json()["detail"], r.text
    assert rows(ctl, tables.orders) == []
    assert ctl.orders.pending("n1") == []
    assert kinds(ctl) == before
    assert ctl.ledger.verify().ok


def test_a_failure_after_the_state_write_leaves_neither_state_nor_record(
        ctl: Controller, monkeypatch: pytest.MonkeyPatch) -> None:
    enrolled(ctl)
    before = kinds(ctl)

    def broken(self: Ledger, *args: Any, **kw: Any) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(Ledger, "_insert", broken)  # writing the record fails
    with pytest.raises(RuntimeError):
        ctl.orders.create("n1", "attest", {}, "operator:alice")
    with pytest.raises(RuntimeError):
        ctl.nodes.move("n1", transition(NodeState.ENROLLED, NodeState.SUSPECT, "t"), "test")
    with pytest.raises(RuntimeError):
        ctl.enrollment.issue_token("n2")
    monkeypatch.undo()
    assert rows(ctl, tables.orders) == []
    assert ctl.nodes.get("n1")["state"] == NodeState.ENROLLED
    assert rows(ctl, tables.tokens) and all(t["node_id"] == "n1" for t in rows(ctl, tables.tokens))
    assert kinds(ctl) == before


def test_every_state_change_has_its_record(ctl: Controller) -> None:
    enrolled(ctl)
    signed = ctl.orders.create("n1", "attest", {}, "operator:alice")
    [order] = [r for r in ctl.ledger.records() if r.kind == Kind.ORDER]
    assert order.body["order_id"] == str(signed.order.id)
    changes = [r.body for r in ctl.ledger.records() if r.kind == Kind.STATE_CHANGE]
    assert changes == [{"from": "provisioning", "to": "enrolled", "reason": "test"}]
    assert json.loads(rows(ctl, tables.orders)[0]["signed"])["order"]["id"] == str(signed.order.id)
