"""API fuzzing: schemathesis generates requests from the controller's OpenAPI document
(valid and invalid bodies) against the real app on a real SQLite database and ledger.
No request may produce a 5xx; malformed requests must get a 4xx with a message."""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig

from aegis_controller.api.app import create_app
from aegis_controller.domain import open_controller
from aegis_controller.ledger import init_keys
from aegis_controller.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory) -> schemathesis.BaseSchema:
    state: Path = tmp_path_factory.mktemp("controller")
    init_keys(state / "keys")
    controller = open_controller(Settings.resolve(
        state, f"sqlite:///{state / 'controller.db'}", state / "ledger.anchor.json"))
    controller.enrollment.issue_token("fuzz1", 600)
    # both positive (schema-valid) and negative (schema-violating) requests
    config = SchemathesisConfig.from_dict({"generation": {"mode": "all", "max-examples": 60}})
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(controller), config=config)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_no_request_makes_the_api_fail(case: schemathesis.Case) -> None:
    response = case.call()
    seen.add((case.path, response.status_code))
    assert response.status_code < 500, f"{case.method} {case.path}: {response.text}"
    if response.status_code >= 400:
        detail = response.json().get("detail")
        assert isinstance(detail, str) and detail, response.text


seen: set[tuple[str, int]] = set()


def test_the_fuzzer_reached_the_refusal_paths() -> None:
    """The fuzz run above got real 4xx answers (validation, missing identity)."""
    if not seen:
        pytest.skip("run together with the fuzz test")
    codes = {code for _p, code in seen}
    assert 422 in codes and 401 in codes, seen

