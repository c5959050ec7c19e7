"""The aegis.fleet.audit callback plugin with real ansible-playbook runs, writing the real
ledger on SQLite and on PostgreSQL; `aegis-controller ledger verify` checks the result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness import PATHS

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent

PLAY = """
- name: A small play on the control node
  hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: Say something
      ansible.builtin.debug:
        msg: hello
    - name: Maybe fail
      ansible.builtin.fail:
        msg: failing on purpose
      when: fail_now | default(false) | bool
"""


def _controller(state: Path, db: str | None, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, AEGIS_CONTROLLER_STATE_DIR=str(state))
    if db:
        env["AEGIS_CONTROLLER_DB"] = db
    return subprocess.run([str(BIN / "aegis-controller"), *args], env=env, capture_output=True,
                          text=True, timeout=120, check=False)


def _play(tmp_path: Path, state: Path, db: str | None, *extra: str) -> subprocess.CompletedProcess:
    playbook = tmp_path / "site.yml"
    playbook.write_text(PLAY)
    env = dict(os.environ, AEGIS_CONTROLLER_STATE_DIR=str(state),
               ANSIBLE_CALLBACKS_ENABLED="aegis.fleet.audit",
               ANSIBLE_COLLECTIONS_PATH=str(PATHS.collections),
               ANSIBLE_LOCALHOST_WARNING="false", ANSIBLE_INVENTORY_UNPARSED_WARNING="false")
    if db:
        env["AEGIS_CONTROLLER_DB"] = db
    return subprocess.run([str(BIN / "ansible-playbook"), str(playbook), *extra], env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def _runs(state: Path, db: str | None) -> list[dict]:
    out = _controller(state, db, "ledger", "show")
    assert out.returncode == 0, out.stderr
    records = [json.loads(line) for line in out.stdout.splitlines()]
    return [r for r in records if r["kind"] == "playbook_run"]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_runs_are_recorded_and_the_ledger_verifies(tmp_path: Path, backend: str,
                                                   request: pytest.FixtureRequest) -> None:
    db = request.getfixturevalue("pg_url") if backend == "postgresql" else None
    state = tmp_path / "state"
    assert _controller(state, db, "keys", "init").returncode == 0
    ok = _play(tmp_path, state, db)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = _play(tmp_path, state, db, "-e", "fail_now=true", "--check")
    assert bad.returncode == 2
    runs = _runs(state, db)
    assert [r["body"]["result"] for r in runs][-2:] == ["ok", "failed"]
    first, second = runs[-2]["body"], runs[-1]["body"]
    assert first["playbook"] == str(tmp_path / "site.yml")
    assert len(first["playbook_sha256"]) == 64
    assert first["hosts"]["localhost"]["ok"] == 1 and first["check_mode"] is False
    assert second["hosts"]["localhost"]["failures"] == 1 and second["check_mode"] is True
    assert runs[-1]["actor"].startswith("ansible:")
    assert "hello" not in json.dumps(runs) and "fail_now" not in json.dumps(runs)
    verify = _controller(state, db, "ledger", "verify")
    assert verify.returncode == 0 and "ledger OK" in verify.stdout, verify.stdout


def test_awx_jobs_name_the_awx_user(tmp_path: Path) -> None:
    state = tmp_path / "state"
    _controller(state, None, "keys", "init")
    run = _play(tmp_path, state, None, "-e", "awx_job_id=42", "-e", "awx_user_name=alice")
    assert run.returncode == 0
    (rec,) = _runs(state, None)
    assert rec["actor"] == "awx:alice" and rec["body"]["job"]["awx_job_id"] == "42"


def test_an_unusable_ledger_warns_and_the_play_still_succeeds(tmp_path: Path) -> None:
    state = tmp_path / "state"  # no keys: the ledger cannot be signed
    run = _play(tmp_path, state, None)
    assert run.returncode == 0
    assert "aegis.fleet.audit" in run.stderr and "NOT on the audit ledger" in run.stderr
    run = _play(tmp_path, state, "postgresql+psycopg://nobody@127.0.0.1:1/none")
    assert run.returncode == 0 and "NOT on the audit ledger" in run.stderr


def test_the_callback_never_prints_the_database_password(tmp_path: Path) -> None:
    secret = "s3cret-pw"  # noqa: S105 (a test value)
    state = tmp_path / "state"
    assert _controller(state, None, "keys", "init").returncode == 0
    for url in (f"postgresql+nosuchdriver://aegis:{secret}@127.0.0.1:1/none",
                f"postgresql+psycopg://aegis:{secret}@127.0.0.1:1/none"):
        run = _play(tmp_path, state, url)
        assert run.returncode == 0 and "NOT on the audit ledger" in run.stderr, run.stderr
        assert "aegis:***@127.0.0.1" in run.stderr, run.stderr
        assert secret not in run.stderr + run.stdout
