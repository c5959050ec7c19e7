"""Bootstrap tokens response-wrapped by a real OpenBao dev server: the controller's CLI
wraps, the agent's unwrap opens the wrapping token once, checks where it came from and
whom it is for, and a second unwrap is refused."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
import sqlalchemy as sa

from aegis_agent.config import VaultConfig
from aegis_agent.unwrap import UnwrapError, unwrap_bootstrap
from conftest import sub_prefix
from harness import OpenBao
from harness_controller import Server, controller_server, enroll, new_node

pytestmark = pytest.mark.integration


@pytest.fixture
def ctl() -> Iterator[Server]:
    with controller_server(sub_prefix(), None) as srv:
        yield srv


def _bao(openbao: OpenBao) -> dict[str, str]:
    return {"BAO_ADDR": openbao.addr, "BAO_TOKEN": openbao.token}


def _tokens(ctl: Server) -> int:
    with ctl.engine().connect() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM bootstrap_tokens")).scalar_one())


def test_wrapped_token_opens_once_for_its_node_and_enrolls(ctl: Server,
                                                           openbao: OpenBao) -> None:
    out = ctl.ctl("token", "issue", "web-1", "--ttl", "120", env=_bao(openbao))
    assert out.returncode == 0, out.stderr
    wrapping = out.stdout.strip()
    assert f"response-wrapped by {openbao.addr}" in out.stderr
    # the ledger says a wrapped token was issued (the accessor, never the token)
    ledger = ctl.ctl("ledger", "show").stdout
    issued = [json.loads(line) for line in ledger.splitlines() if "token_issued" in line]
    assert issued and issued[-1]["body"]["wrapped"] is True, ledger
    assert issued[-1]["body"]["wrap_accessor"], issued[-1]
    assert wrapping not in ledger

    vault = VaultConfig(url=openbao.addr)
    with pytest.raises(UnwrapError, match="for node 'web-1', this is 'web-2'"):
        unwrap_bootstrap(vault, wrapping, "web-2")
    # that look at it spent it: the wrapping token opens once, whoever opens it
    with pytest.raises(UnwrapError, match="already unwrapped or it expired") as gone:
        unwrap_bootstrap(vault, wrapping, "web-1")
    assert gone.value.spent

    out = ctl.ctl("token", "issue", "web-1", env=_bao(openbao))
    token = unwrap_bootstrap(vault, out.stdout.strip(), "web-1")
    assert token != out.stdout.strip()
    node = new_node(ctl, "web-1")
    assert enroll(ctl, node, token).status_code == 200
    with pytest.raises(UnwrapError, match="already unwrapped") as again:
        unwrap_bootstrap(vault, out.stdout.strip(), "web-1")
    assert again.value.spent


def test_a_wrapping_token_not_made_by_sys_wrapping_wrap_is_left_alone(
        openbao: OpenBao) -> None:
    """A wrapping token of some other response (here a child token from auth/token/create)
    is refused before it is unwrapped: the agent neither trusts nor spends it."""
    with httpx.Client(base_url=openbao.addr, timeout=30) as c:
        r = c.post("/v1/auth/token/create", json={"ttl": "5m"},
                   headers={"X-Vault-Token": openbao.token, "X-Vault-Wrap-TTL": "60s"})
        other = r.raise_for_status().json()["wrap_info"]["token"]
    with pytest.raises(UnwrapError, match="created by 'auth/token/create'") as refused:
        unwrap_bootstrap(VaultConfig(url=openbao.addr), other, "web-1")
    assert not refused.value.spent
    with httpx.Client(base_url=openbao.addr, timeout=30) as c:  # still unopened
        assert c.post("/v1/sys/wrapping/unwrap",
                      headers={"X-Vault-Token": other}).status_code == 200


def test_token_issue_wrap_problems_are_clear_and_issue_nothing(ctl: Server,
                                                                openbao: OpenBao) -> None:
    before = _tokens(ctl)
    out = ctl.ctl("token", "issue", "web-1", "--wrap", env={"BAO_ADDR": "",
                                                             "VAULT_ADDR": ""})
    assert out.returncode == 2 and "--wrap needs a Vault-compatible server" in out.stderr
    out = ctl.ctl("token", "issue", "web-1", env={"BAO_ADDR": openbao.addr, "BAO_TOKEN": ""})
    assert out.returncode == 2 and "no token: put one in BAO_TOKEN" in out.stderr
    out = ctl.ctl("token", "issue", "web-1",
                  env={"BAO_ADDR": openbao.addr, "BAO_TOKEN": "not-a-real-token"})
    assert out.returncode == 2, out.stderr
    assert "refused the token (403)" in out.stderr and "no token was issued" in out.stderr
    assert "not-a-real-token" not in out.stderr
    out = ctl.ctl("token", "issue", "web-1", env={"BAO_ADDR": "bao.example:8200"})
    assert out.returncode == 2 and "is not a URL" in out.stderr
    assert _tokens(ctl) == before
    # --no-wrap: the controller's own token, even with a server configured
    out = ctl.ctl("token", "issue", "web-1", "--no-wrap", env=_bao(openbao))
    assert out.returncode == 0 and "response-wrapped" not in out.stderr
    assert _tokens(ctl) == before + 1
