"""Leased secrets, controller side, without a server: the gate's configuration and its
errors, the ledger's view of a fetch-secrets order (never the wrapping token), the
stored order scrubbed, report checks, revocation back-off, and the agent-event rules."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aegis_controller.incidents import incidents_for
from aegis_controller.secrets.revocation import MAX_BACKOFF, backoff
from aegis_controller.secrets.settings import SecretsConfigError, SecretsSettings
from aegis_controller.secrets.store import LEASE, ledger_args, scrub_signed
from aegis_controller.secrets.vault import SecretsVault, VaultCallError
from aegis_protocol.events import Event
from aegis_protocol.orders import new_order, sign_order

pytestmark = pytest.mark.unit

WRAPPED = "s.wrapping-token-value-1234"  # a stand-in


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AEGIS_SECRETS_TOKEN_FILE", "AEGIS_VAULT_ADDR", "BAO_ADDR", "VAULT_ADDR",
                 "BAO_CACERT", "VAULT_CACERT", "AEGIS_SECRETS_APPROLE_MOUNT",
                 "AEGIS_SECRETS_PREFIX", "AEGIS_SECRETS_WRAP_TTL", "AEGIS_SECRETS_VERIFY_DSN"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "controller-token"
    path.write_text("hvs.controller-token-stand-in\n")
    return path


def test_gate_is_off_without_a_token_file() -> None:
    assert SecretsSettings.resolve(addr="http://127.0.0.1:8200") is None


def test_options_then_environment_then_defaults(token_file: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AEGIS_SECRETS_TOKEN_FILE", str(token_file))
    monkeypatch.setenv("BAO_ADDR", "http://127.0.0.1:8200/")
    monkeypatch.setenv("AEGIS_SECRETS_WRAP_TTL", "30")
    s = SecretsSettings.resolve(prefix="fleet")
    assert s is not None
    assert (s.addr, s.approle_mount, s.prefix, s.wrap_ttl) == (
        "http://127.0.0.1:8200", "aegis-approle", "fleet", 30)
    assert s.approle("web") == "fleet-web"
    assert s.creation_path("web") == "auth/aegis-approle/role/fleet-web/secret-id"
    assert "token-stand-in" not in repr(s)  # the token stays out of reprs
    monkeypatch.setenv("AEGIS_SECRETS_VERIFY_DSN", "host=x password=hunter2")
    assert "hunter2" not in repr(SecretsSettings.resolve(wrap_ttl=5))


@pytest.mark.parametrize(("over", "message"), [
    ({"wrap_ttl": 61}, "wrap TTL 61 s is out of range: 1 to 60"),
    ({"wrap_ttl": 0}, "out of range"),
    ({"wrap_ttl": "soon"}, "not a whole number of seconds"),
    ({"approle_mount": "/approle/"}, "bad AppRole mount '/approle/'"),
    ({"prefix": "Aegis"}, "bad name prefix 'Aegis'"),
    ({"addr": "ftp://vault"}, "vault address"),
    ({"token_file": "/nonexistent/token"}, "cannot read the secrets token file"),
    ({"ca_file": "/nonexistent/ca.pem"}, "cannot load the vault CA"),
])
def test_bad_configuration_says_what_and_how(token_file: Path, over: dict,
                                             message: str) -> None:
    values = {"token_file": str(token_file), "addr": "http://127.0.0.1:8200", **over}
    with pytest.raises(SecretsConfigError, match=message.replace("(", r"\(")):
        SecretsSettings.resolve(**values)


def test_token_file_without_address_or_token(token_file: Path, tmp_path: Path) -> None:
    with pytest.raises(SecretsConfigError, match="no Vault address: pass --vault-addr"):
        SecretsSettings.resolve(token_file=str(token_file))
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(SecretsConfigError, match="holds no token"):
        SecretsSettings.resolve(token_file=str(tmp_path / "empty"), addr="http://127.0.0.1:1")


def test_serve_refuses_bad_configuration(tmp_path: Path, token_file: Path) -> None:
    cli = [sys.executable, "-m", "aegis_controller.cli", "--state-dir", str(tmp_path / "s"),
           "serve", "--secrets-token-file", str(token_file), "--vault-addr",
           "http://127.0.0.1:1", "--secrets-wrap-ttl", "600"]
    out = subprocess.run(cli, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2, out.stderr
    assert "wrap TTL 600 s is out of range" in out.stderr
    assert "controller-token-stand-in" not in out.stderr + out.stdout


def test_ledger_never_sees_the_wrapping_token_and_the_stored_order_is_scrubbed() -> None:
    args = {"role": "aegis-web", "wrapped_secret_id": WRAPPED}
    assert ledger_args(args) == {"role": "aegis-web", "wrapped_secret_id": "scrubbed"}
    signed = sign_order(Ed25519PrivateKey.generate(),
                        new_order("n1", "fetch-secrets", args, lifetime=60))
    stored = scrub_signed(signed.model_dump_json())
    assert WRAPPED not in stored
    assert json.loads(stored)["order"]["args"]["role"] == "aegis-web"


@pytest.mark.parametrize(("lease", "ok"), [
    ("aegis-db/creds/web/Xq3vJZpLkq2ZbA7cWm8dTn1R", True),
    ("t1a2b3-db/creds/web/2f6a614c-4aa2-7b19-24b9-ad944a8d4de6", True),
    ("aegis-db/creds/web/", False),  # a prefix of every node's leases
    ("aegis-db/creds/web/short", False),
    ("aegis-db/creds/", False),
    ("sys/leases/../creds/web/Xq3vJZpLkq2ZbA7cWm8dTn1R", False),
    ("aegis-kv/data/web/Xq3vJZpLkq2ZbA7cWm8dTn1R", False),
])
def test_only_whole_database_lease_ids_are_revoked(lease: str, ok: bool) -> None:
    assert bool(LEASE.match(lease)) is ok


def test_backoff_grows_and_is_capped() -> None:
    waits = [backoff(n) for n in range(1, 10)]
    assert waits[:4] == [1, 2, 4, 8] and max(waits) == MAX_BACKOFF == waits[-1]


def _agent_event(what: str) -> Event:
    return Event(ts_ns=time.time_ns(), kind="agent", severity="critical",
                 data={"what": what})


def test_unwrap_failure_is_a_critical_incident_and_spool_rule_still_works() -> None:
    rules = incidents_for(_agent_event("secrets_unwrap_failed"))
    assert [(r.name, r.severity) for r in rules] == [("secrets-unwrap-failed", "critical")]
    assert [r.name for r in incidents_for(_agent_event("spool_corrupt"))] == ["spool-corrupt"]
    assert incidents_for(_agent_event("secrets_fetched")) == []


def test_an_orders_repr_never_shows_the_wrapping_token() -> None:
    """The controller's helper found it: ``repr=False`` on the command model did not cover
    the order's plain ``args`` dict, so a SignedOrder in a log line or traceback held it."""
    order = new_order("n1", "fetch-secrets", {"role": "aegis-web", "wrapped_secret_id": WRAPPED})
    signed = sign_order(Ed25519PrivateKey.generate(), order)
    for text in (repr(order), str(order), repr(signed), str(signed)):
        assert WRAPPED not in text and "aegis-web" in text
    assert signed.order.args["wrapped_secret_id"] == WRAPPED  # the value itself is intact


class _DropsFirstRequest:
    """A loopback HTTP server (a local stand-in for a Vault behind a proxy) that reads the
    first request and closes the connection without an answer — what a keep-alive
    connection closed by a proxy's idle timeout does to a request already sent — then
    answers every later one. ``drops``: how many requests to drop."""

    def __init__(self, drops: int) -> None:
        self.drops, self.requests = drops, 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.addr = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                self.requests += 1
                if self.requests <= self.drops:
                    continue
                body = b'{"auth": {"client_token": "renewed"}}'
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Connection: close\r\nContent-Length: "
                             + str(len(body)).encode() + b"\r\n\r\n" + body)


@pytest.mark.parametrize(("drops", "ok"), [(1, True), (2, True), (3, False)])
def test_a_call_whose_connection_broke_before_an_answer_is_tried_twice_more(
        token_file: Path, drops: int, ok: bool) -> None:
    server = _DropsFirstRequest(drops)
    settings = SecretsSettings.resolve(token_file=str(token_file), addr=server.addr)
    assert settings is not None
    vault = SecretsVault(settings)
    try:
        if ok:
            vault.renew_self()  # before: "Server disconnected without sending a response"
        else:
            with pytest.raises(VaultCallError, match=r"cannot reach the vault at .* to renew "
                               r"the controller's token: RemoteProtocolError"):
                vault.renew_self()
        assert server.requests == min(drops + 1, 3)
    finally:
        vault.close()
        server.sock.close()
