"""The pieces of ``aegis-controller backup`` that need no controller: which ledger marks go
with a copy of the database, the operators' age keys, and PostgreSQL's client programs
never given the database password on their command line or in their errors."""

from __future__ import annotations

import json
from pathlib import Path

import pyrage
import pytest

from aegis_controller.backup import BackupError, identities, new_identity, pg_tools, recipients
from aegis_controller.backup.snapshot import fits

pytestmark = pytest.mark.unit
SECRET = "s3cret-pw"  # noqa: S105 (a test value)


def mark(seq: int) -> bytes:
    return json.dumps({"seq": seq}).encode()


@pytest.mark.parametrize(("marks", "head", "checkpoint", "ok"), [
    ((None, None), 0, 0, True),             # an empty ledger
    ((None, None), 7, 0, True),             # records, no checkpoint yet
    ((None, None), 7, 4, False),            # a checkpoint whose anchor is not written yet
    ((mark(4), None), 7, 4, True),
    ((mark(2), None), 7, 4, False),         # older than the copy's checkpoint: rollback
    ((mark(8), None), 7, 4, False),         # past the copy: truncated
    ((mark(4), mark(7)), 7, 4, True),
    ((mark(4), mark(9)), 7, 4, False),      # the signed head past the copy
    ((b"{not json", None), 7, 4, False),    # unreadable: never chosen
])
def test_marks_fit_a_copy_only_when_they_name_records_it_holds(
        marks: tuple[bytes | None, bytes | None], head: int, checkpoint: int,
        ok: bool) -> None:
    assert fits(marks, head, checkpoint) is ok


def test_an_identity_round_trips_and_is_never_overwritten(tmp_path: Path) -> None:
    out = tmp_path / "id"
    recipient = new_identity(out)
    assert out.stat().st_mode & 0o777 == 0o600
    (tmp_path / "r").write_text(f"# comment\n\n{recipient}\n")
    (to,) = recipients([], [tmp_path / "r"])
    assert pyrage.decrypt(pyrage.encrypt(b"x", [to]), identities(out)) == b"x"
    with pytest.raises(BackupError, match="never overwritten"):
        new_identity(out)


def test_bad_keys_are_refused_naming_the_fix(tmp_path: Path) -> None:
    with pytest.raises(BackupError, match="--recipient age1"):
        recipients([], [])
    with pytest.raises(BackupError, match="not an age"):
        recipients(["age1notakey"], [])
    (tmp_path / "id").write_text("nothing here\n")
    with pytest.raises(BackupError, match="AGE-SECRET-KEY-1"):
        identities(tmp_path / "id")


def test_pg_tools_keep_the_password_off_the_command_line_and_out_of_errors(
        tmp_path: Path) -> None:
    url = f"postgresql+psycopg://aegis:{SECRET}@127.0.0.1:1/aegis?sslmode=disable"
    args, env = pg_tools._conninfo(url)
    assert SECRET not in " ".join(args) and env["PGPASSWORD"] == SECRET
    assert "sslmode='disable'" in args[0] and "port='1'" in args[0]
    with pytest.raises(pg_tools.PgToolError) as err:  # nothing listens on port 1
        pg_tools.dump(url, tmp_path / "x.dump")
    assert SECRET not in str(err.value) and "pg_dump failed" in str(err.value)
