"""Wrapping bootstrap tokens through hvac: settings from options and environment, and every
failure a VaultError that names the server and says what to do (no server needed here;
tests/integration/test_wrapped_bootstrap.py runs against a real OpenBao)."""

from __future__ import annotations

from pathlib import Path

import pytest

from aegis_controller.vault_wrap import VaultError, VaultSettings, wrap_bootstrap

pytestmark = pytest.mark.unit


def test_settings_come_from_options_then_the_environment(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("AEGIS_VAULT_ADDR", "BAO_ADDR", "VAULT_ADDR", "BAO_TOKEN", "VAULT_TOKEN",
                 "BAO_CACERT", "VAULT_CACERT"):
        monkeypatch.delenv(name, raising=False)
    assert VaultSettings.resolve(None, None, None) is None
    monkeypatch.setenv("VAULT_ADDR", "http://127.0.0.1:8200/")
    monkeypatch.setenv("VAULT_TOKEN", "t1")
    assert VaultSettings.resolve(None, None, None) == VaultSettings("http://127.0.0.1:8200", "t1")
    (tmp_path / "token").write_text("t2\n")
    from_file = VaultSettings.resolve("https://bao:8200", str(tmp_path / "token"), None)
    assert from_file is not None and from_file.token == "t2"  # noqa: S105
    with pytest.raises(VaultError, match="'bao:8200' is not a URL"):
        VaultSettings.resolve("bao:8200", None, None)


@pytest.mark.parametrize("variable", ["--vault-addr", "AEGIS_VAULT_ADDR", "BAO_ADDR",
                                      "VAULT_ADDR"])
def test_plain_http_is_refused_outside_loopback(monkeypatch: pytest.MonkeyPatch,
                                                variable: str) -> None:
    for name in ("AEGIS_VAULT_ADDR", "BAO_ADDR", "VAULT_ADDR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BAO_TOKEN", "t")
    addr = "http://bao.example:8200"
    option = addr if variable == "--vault-addr" else None
    if option is None:
        monkeypatch.setenv(variable, addr)
    with pytest.raises(VaultError, match=r"plain http to bao\.example, which is not loopback: "
                       "use https://"):
        VaultSettings.resolve(option, None, None)
    for ok in ("http://127.0.0.1:8200", "http://localhost:8200", "https://bao.example:8200"):
        assert VaultSettings.resolve(ok, None, None) == VaultSettings(ok, "t")


def test_an_unreachable_server_is_named(tmp_path: Path) -> None:
    settings = VaultSettings("http://127.0.0.1:1", "t")
    with pytest.raises(VaultError, match=r"cannot reach the vault at http://127\.0\.0\.1:1"):
        wrap_bootstrap(settings, "web-1", "x" * 43, 60)
    (tmp_path / "ca.pem").write_text("not a certificate")
    with pytest.raises(VaultError, match="cannot load the vault CA"):
        wrap_bootstrap(VaultSettings("https://127.0.0.1:1", "t", tmp_path / "ca.pem"),
                       "web-1", "x" * 43, 60)
    with pytest.raises(VaultError, match="node id 'Web 1' is not valid"):
        wrap_bootstrap(settings, "Web 1", "x" * 43, 60)
