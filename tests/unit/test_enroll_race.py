"""One bootstrap token, many racing enrollments: exactly one wins, every other attempt is
refused cleanly (never "database is locked") and every refusal is on the ledger."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from harness_domain import enroll_request, make_controller

from aegis_controller import db
from aegis_controller.api.app import create_app
from aegis_controller.domain import Controller
from aegis_controller.errors import DomainError
from aegis_controller.ledger import Kind
from aegis_protocol import routes
from aegis_protocol.enrollment import EnrollRequest

pytestmark = pytest.mark.unit

RACERS = 48


@pytest.fixture
def ctl(tmp_path: Path) -> Controller:
    return make_controller(tmp_path)


def test_racing_reuse_of_one_token_one_success_every_refusal_recorded(ctl: Controller) -> None:
    token = ctl.enrollment.issue_token("n1")
    requests = [enroll_request("n1", token) for _ in range(RACERS)]
    start = threading.Barrier(RACERS, timeout=30)
    results: list[str] = []

    def attempt(req: EnrollRequest, i: int) -> None:
        start.wait()
        try:
            ctl.enrollment.enroll(req, f"10.0.{i}.1:1000")  # token reuse, not one flood
            results.append("enrolled")
        except DomainError as e:
            results.append(f"{type(e).__name__}: {e.message}")
        except Exception as e:  # what the test is about: nothing else, no lock errors
            results.append(f"error: {e!r}")

    threads = [threading.Thread(target=attempt, args=(r, i)) for i, r in enumerate(requests)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(results) == RACERS
    assert results.count("enrolled") == 1, results
    refusals = [r for r in results if r != "enrolled"]
    assert all(r.startswith("Forbidden: enrollment refused: bootstrap token was already used")
               for r in refusals), refusals
    records = list(ctl.ledger.records())
    assert sum(r.kind == Kind.TOKEN_REFUSED for r in records) == RACERS - 1
    assert sum(r.kind == Kind.ENROLLMENT and r.body.get("event") == "enrolled"
               for r in records) == 1
    assert ctl.ledger.verify().ok


def test_a_held_write_lock_is_a_503_with_retry_after_then_the_retry_works(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process holds the write lock past the lock timeout: the client is told to
    retry (503, Retry-After), not given a 500; its retry then enrolls."""
    monkeypatch.setattr(db, "LOCK_TIMEOUT", 0.2)
    ctl = make_controller(tmp_path)
    token = ctl.enrollment.issue_token("n1")
    body = enroll_request("n1", token).model_dump()
    holder = sqlite3.connect(tmp_path / "controller.db", isolation_level=None)
    with TestClient(create_app(ctl), raise_server_exceptions=False) as client:
        holder.execute("BEGIN IMMEDIATE")
        try:
            r = client.post(routes.ENROLL, json=body)
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"].isdigit()
        assert "retry" in r.json()["detail"]
        assert client.post(routes.ENROLL, json=body).status_code == 200
