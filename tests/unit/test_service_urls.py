"""Service URLs (issue 12 item 22): https://, or plain http:// to loopback only; the
agent role documents the same rule for the URLs it passes on."""

from __future__ import annotations

import pytest
import yaml

from aegis_protocol.urls import checked_url
from harness import REPO

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("url", ["https://bao.example:8200", "https://10.0.0.5",
                                 "http://127.0.0.1:8200", "http://127.8.9.1",
                                 "http://[::1]:8200", "http://localhost:8200/"])
def test_allowed(url: str) -> None:
    assert checked_url(url, "the url") == url


@pytest.mark.parametrize(("url", "expected"), [
    ("http://10.0.0.5:8200", "plain http to 10.0.0.5, which is not loopback"),
    ("http://bao.example", "plain http to bao.example, which is not loopback"),
    ("http://localhost.evil.example", "not loopback"),
    ("http://[::ffff:10.0.0.1]", "not loopback"),
    ("ftp://127.0.0.1", "is not a URL"),
    ("https://", "is not a URL"),
    ("bao:8200", "is not a URL"),
])
def test_refused(url: str, expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        checked_url(url, "the url")


def test_the_agent_role_states_the_rule() -> None:
    specs = yaml.safe_load((REPO / "roles/agent/meta/argument_specs.yml").read_text())
    options = specs["argument_specs"]["main"]["options"]
    for name in ("agent_vault_url", "agent_controller_url"):
        text = " ".join([options[name]["description"]] if isinstance(
            options[name]["description"], str) else options[name]["description"])
        assert "loopback" in text or "https://" in text, name
    assert "loopback" in " ".join(options["agent_vault_url"]["description"])
