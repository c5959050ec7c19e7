"""The installed ``aegis-controller`` command: exit codes 0 / 1 / 2, messages that say
what was wrong and what to do, and never a traceback."""

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
CLI = str(Path(sys.executable).with_name("aegis-controller"))


class Cli:
    def __init__(self, state: Path) -> None:
        self.state = state
        self.env = {**os.environ, "AEGIS_CONTROLLER_STATE_DIR": str(state)}
        for name in ("AEGIS_CONTROLLER_DB", "AEGIS_LEDGER_ANCHOR",
                     "AEGIS_LEDGER_CHECKPOINT_EVERY"):
            self.env.pop(name, None)

    def __call__(self, *args: str, rc: int = 0, stdin: str | None = None):
        proc = subprocess.run([CLI, *args], env=self.env, capture_output=True, text=True,
                              input=stdin, timeout=60, check=False)
        assert proc.returncode == rc, f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        assert "Traceback" not in proc.stderr + proc.stdout
        return proc


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path / "state")


def test_keys_append_show_checkpoint_verify(cli):
    keys = json.loads(cli("keys", "init").stdout)
    assert Path(keys["private_key"]).stat().st_mode & 0o777 == 0o600
    assert cli("keys", "public").stdout.startswith("-----BEGIN PUBLIC KEY-----")
    for i in range(5):
        rec = json.loads(cli("ledger", "append", "--kind", "attestation", "--subject", "node1",
                             "--json", json.dumps({"verdict": "match", "i": i}),
                             "--checkpoint-every", "3").stdout)
        assert rec["actor"].startswith("operator:")
    rec = json.loads(cli("ledger", "append", "--kind", "playbook_run", "--json", "-",
                         "--actor", "recovery", stdin='{"playbook": "harden.yml"}').stdout)
    # seqs 4 and 7 are checkpoints
    assert (rec["seq"], rec["subject"], rec["actor"]) == (8, "", "recovery")
    lines = cli("ledger", "show", "--last", "3").stdout.splitlines()
    assert [json.loads(line)["seq"] for line in lines] == [6, 7, 8]
    assert len(cli("ledger", "show").stdout.splitlines()) == 8
    out = json.loads(cli("ledger", "checkpoint").stdout)
    assert out["checkpoint"]["seq"] == out["anchor"]["seq"] == 9
    proc = cli("ledger", "verify")
    assert proc.stdout.startswith("ledger OK: 9 records, 3 checkpoints")
    result = json.loads(cli("ledger", "verify", "--json").stdout)
    assert result["ok"] and result["anchor"]["seq"] == 9


def test_verification_failure_exits_1_naming_the_first_bad_seq(cli):
    cli("keys", "init")
    for i in range(4):
        cli("ledger", "append", "--kind", "order", "--subject", "n1", "--json", f'{{"i": {i}}}')
    con = sqlite3.connect(cli.state / "controller.db")
    con.execute("""UPDATE ledger_records SET body = '{"i":99}' WHERE seq = 2""")
    con.commit()
    con.close()
    proc = cli("ledger", "verify", rc=1)
    assert "FAILED at seq 2: edited" in proc.stdout
    result = json.loads(cli("ledger", "verify", "--json", rc=1).stdout)
    assert (result["problem"], result["first_bad_seq"], result["count"]) == ("edited", 2, 1)


def test_verifier_needs_only_the_public_key(cli, tmp_path):
    cli("keys", "init")
    cli("ledger", "append", "--kind", "enrollment", "--subject", "n1", "--json", "{}")
    cli("ledger", "checkpoint")
    pub = tmp_path / "exported.pub"
    pub.write_text(cli("keys", "public").stdout)
    (cli.state / "keys" / "ledger.key").unlink()
    assert cli("ledger", "verify", "--public-key", str(pub)).stdout.startswith("ledger OK")


@pytest.mark.parametrize(("args", "needle"), [
    (["--kind", "reboot", "--json", "{}"], "unknown record kind 'reboot': use one of"),
    (["--kind", "order", "--json", "[1, 2]"], "body must be a JSON object"),
    (["--kind", "order", "--json", "{nope"], "--json is not valid JSON"),
    (["--kind", "checkpoint", "--json", "{}"], "use `aegis-controller ledger checkpoint`"),
])
def test_bad_append_input_exits_2_with_the_fix(cli, args, needle):
    cli("keys", "init")
    proc = cli("ledger", "append", "--subject", "n1", *args, rc=2)
    assert needle in proc.stderr


def test_missing_key_says_run_keys_init(cli):
    proc = cli("ledger", "append", "--kind", "order", "--json", "{}", rc=2)
    assert "run `aegis-controller keys init`" in proc.stderr
    proc = cli("ledger", "verify", rc=2)
    assert "ledger.pub" in proc.stderr and "keys init" in proc.stderr


def test_key_readable_by_others_is_refused(cli):
    cli("keys", "init")
    (cli.state / "keys" / "ledger.key").chmod(0o644)
    proc = cli("ledger", "append", "--kind", "order", "--json", "{}", rc=2)
    assert "chmod 600" in proc.stderr


def test_corrupt_database_exits_2_naming_the_file(cli):
    cli("keys", "init")
    dbfile = cli.state / "controller.db"
    dbfile.write_bytes(os.urandom(8192))
    for args in (["ledger", "verify"], ["ledger", "show"],
                 ["ledger", "append", "--kind", "order", "--json", "{}"]):
        proc = cli(*args, rc=2)
        assert f"database file {dbfile}: file is not a database" in proc.stderr


def test_missing_database_exits_2_for_readers(cli):
    cli("keys", "init")
    proc = cli("ledger", "verify", rc=2)
    assert "no database file at" in proc.stderr
    assert not (cli.state / "controller.db").exists()


def test_corrupt_anchor_fails_verify_and_blocks_checkpoint(cli):
    cli("keys", "init")
    cli("ledger", "append", "--kind", "order", "--json", "{}")
    cli("ledger", "checkpoint")
    anchor = cli.state / "ledger.anchor.json"
    anchor.write_text("garbage")
    proc = cli("ledger", "verify", rc=1)
    assert f"anchor_invalid: ledger anchor {anchor} is not JSON" in proc.stdout
    proc = cli("ledger", "checkpoint", rc=2)
    assert f"ledger anchor {anchor} is not JSON" in proc.stderr


def test_bad_options_exit_2(cli):
    proc = cli("ledger", "show", "--last", "0", rc=2)
    assert "must be 1 or more" in proc.stderr
    cli("ledger", "frobnicate", rc=2)
    cli(rc=2)


def test_keys_init_refuses_to_replace_a_key(cli):
    cli("keys", "init")
    proc = cli("keys", "init", rc=2)
    assert "already exists" in proc.stderr and "--force" in proc.stderr
