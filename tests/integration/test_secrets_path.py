"""The whole leased-secrets path on this machine with the real pieces (harness_secrets):
controller gate → signed fetch-secrets order → the real agent daemon unwraps, logs in and
renders on tmpfs → a real service logs in to PostgreSQL with it. Then the agent is killed
with SIGKILL (it may be compromised or dead) and the node quarantined: the controller's
revocation alone ends the token, the lease and the PostgreSQL login, and each step with its
time is on the ledger. (The agent's own wipe is in test_secret_sink.py and the fleet test.)"""

from __future__ import annotations

import json

import hvac
import pytest
from harness_secrets import secret_values, secrets_lab, until
from harness_vault import pg_role_exists
from hvac import exceptions as hvac_errors

from conftest import sub_prefix

pytestmark = pytest.mark.integration


def test_after_kill_9_the_controller_alone_revokes_everything() -> None:
    with secrets_lab(sub_prefix()) as lab:
        lab.start_consumer()
        lab.write_config()
        lab.start_agent()
        lab.trust()
        grant = until(lab.live_grant, 60, "the node's secrets")
        assert until((lab.secrets_dir / "db.env").exists, 10, "the file")
        login = grant["logins"][0]
        until(lambda: lab.consumer_status().get("user") == login, 30, "the service's login")
        assert pg_role_exists(lab.pg.port, login)
        values = secret_values(lab)

        lab.kill_agent()  # nothing on the node answers any more
        lab.order("quarantine", level="hard", reason="agent killed, node in doubt")
        done = lab.server.ctl("node", "secrets", lab.node, "--wait-revoked", "60")
        assert done.returncode == 0, done.stdout + done.stderr

        root = hvac.Client(url=lab.bao.addr, token=lab.bao.token)
        with pytest.raises(hvac_errors.VaultError):
            root.write_data("auth/token/lookup-accessor", data={"accessor": grant["accessor"]})
        assert not pg_role_exists(lab.pg.port, login)
        # the service's open session was ended; the file it read is useless now
        until(lambda: lab.consumer_status().get("error"), 30, "the service's failure")
        assert (lab.secrets_dir / "db.env").exists()  # the dead agent could not wipe it

        steps = [r["body"] for r in lab.ledger() if r["kind"] == "secret_lease"
                 and r["body"].get("event") == "revocation_step"
                 and r["body"]["accessor"] == grant["accessor"]]
        assert {s["step"] for s in steps} >= {"revoke_accessor", "verify_token",
                                              "verify_login"}, steps
        assert all(s["outcome"] == "ok" and s["ended_ms"] >= s["started_ms"] > 0
                   for s in steps), steps
        assert [r for r in lab.ledger() if r["kind"] == "secret_lease"
                and r["body"].get("event") == "revoked"]

        stores = [json.dumps(lab.ledger()), (lab.server.state / "serve.log").read_text(),
                  *(p.read_text() for p in lab.agent_logs())]
        for d in (lab.node_dir / "state", lab.node_dir / "spool"):
            stores += [p.read_bytes().decode(errors="replace") for p in d.rglob("*")
                       if p.is_file()]
        for value in values:
            assert not any(value in text for text in stores)
