"""The controller's layers: the domain and the CLI load without FastAPI or starlette (HTTP
lives in aegis_controller.api only, loaded by ``serve``), and the settings and ledger the
audit callback needs load without the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit


def _loaded(*modules: str) -> set[str]:
    code = (f"import importlib, json, sys\nfor m in {list(modules)!r}: importlib.import_module(m)"
            "\nprint(json.dumps(sorted({n.split('.')[0] for n in sys.modules} | "
            "{n for n in sys.modules if n.startswith('aegis_controller.')})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    return set(json.loads(out.stdout))


def test_the_domain_and_the_cli_load_without_http() -> None:
    loaded = _loaded("aegis_controller.domain", "aegis_controller.cli")
    assert "aegis_controller.nodes" in loaded and "aegis_controller.cli.nodes" in loaded
    assert not loaded & {"fastapi", "starlette", "uvicorn"}, loaded & {"fastapi", "starlette"}
    assert not any(name.startswith("aegis_controller.api") for name in loaded)


def test_settings_and_ledger_load_without_the_cli() -> None:
    loaded = _loaded("aegis_controller.settings", "aegis_controller.ledger")
    assert "aegis_controller.ledger.opener" in loaded
    assert not any(name.startswith("aegis_controller.cli") for name in loaded)
