"""The command line skips alembic when the schema is already at the newest shipped
migration; that check reads the newest revision from the migration files' names, so the
names must stay the revisions and the newest must be alembic's one head."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import text

from aegis_controller import db

pytestmark = pytest.mark.unit


def test_each_migration_file_is_named_for_its_revision_and_the_newest_is_the_head() -> None:
    versions = sorted((db.MIGRATIONS / "versions").glob("*.py"))
    assert versions
    for path in versions:
        revision = re.search(r'^revision = "([^"]+)"$', path.read_text(), re.M)
        assert revision and revision.group(1) == path.stem, path
    heads = ScriptDirectory.from_config(db.alembic_config()).get_heads()
    assert heads == [db.newest_revision()]


def test_at_newest_only_when_the_database_is_at_the_newest_revision(tmp_path: Path) -> None:
    engine = db.open_engine(f"sqlite:///{tmp_path / 'c.db'}")
    try:
        assert not db.at_newest(engine)  # empty: no alembic_version table
        db.upgrade(engine)
        assert db.at_newest(engine)
        with db.writer(engine) as conn:
            conn.execute(text("UPDATE alembic_version "
                              "SET version_num = '0012_access_first_packet'"))
        assert not db.at_newest(engine)  # an older schema still goes through alembic
    finally:
        engine.dispose()
