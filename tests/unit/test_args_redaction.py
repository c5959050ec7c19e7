"""Secrets on an SSH session's command lines are masked before the exec event is made
(spool, controller, ledger): by option or assignment name, URL password, Authorization
header, mysql -p; ordinary command lines pass unchanged."""

from __future__ import annotations

import pytest

from aegis_agent.args_redaction import MASK, redact
from aegis_agent.bpf.layout import EXEC_EVENT, exec_args

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("args", "expected"), [
    ("psql --password hunter2 -h db", f"psql --password {MASK} -h db"),
    ("app --db-password=s3cr3t --verbose", f"app --db-password={MASK} --verbose"),
    ("env PGPASSWORD=s3cr3t psql", f"env PGPASSWORD={MASK} psql"),
    ("vault login token=hvs.abcdef", f"vault login token={MASK}"),
    ("tool --api-key AKIA123 --region x", f"tool --api-key {MASK} --region x"),
    ("tool -client-secret=xyz", f"tool -client-secret={MASK}"),
    ("psql postgresql://app:p4ss@db:5432/app", f"psql postgresql://app:{MASK}@db:5432/app"),
    ('curl -H Authorization: Bearer eyJhbGci.x.y https://api',
     f"curl -H Authorization: Bearer {MASK} https://api"),
    ("mysql -u root -pTopSecret app", f"mysql -u root -p{MASK} app"),
    ("/usr/bin/mariadb-dump -pTopSecret app", f"/usr/bin/mariadb-dump -p{MASK} app"),
])
def test_secrets_are_masked(args: str, expected: str) -> None:
    assert redact(args) == expected


@pytest.mark.parametrize("args", [
    "ls -la /etc",
    "mkdir -p /srv/app",  # -p of anything but a MySQL client is not a password
    "agent --token-file /run/aegis/token",  # where the secret is, not the secret
    "ssh-keygen --password-path /x",
    "grep -r password /etc/app.conf",  # a bare word followed by a space is a search term
    "git clone https://example.test/repo.git",  # a URL without userinfo
    "systemctl restart app",
])
def test_ordinary_command_lines_pass_unchanged(args: str) -> None:
    assert redact(args) == args


def test_the_decoded_record_is_masked() -> None:
    raw = bytes(EXEC_EVENT.size) + b"psql\0--password\0hunter2\0-h\0db\0" + bytes(8)
    assert exec_args(raw) == f"psql --password {MASK} -h db"
