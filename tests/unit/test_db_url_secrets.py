"""A database URL's password is never shown (issue 12 item 16): not in the errors of a
URL that cannot be used or a database that cannot be reached, not in the settings' repr,
not on the CLI's stderr; ``db.shown`` and ``db.scrub`` are the one way to show a URL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from aegis_controller.db import DatabaseError, open_engine
from aegis_controller.settings import Settings

pytestmark = pytest.mark.unit

SECRET = "s3cret-pw"  # noqa: S105 (a test value)
BAD_URLS = [
    f"postgresql+psycopg://aegis:{SECRET}@127.0.0.1:1/aegis",  # nothing listens there
    f"postgresql+nosuchdriver://aegis:{SECRET}@127.0.0.1/aegis",  # no such driver
    f"postgresql://aegis:{SECRET}@127.0.0.1:notaport/aegis",  # does not parse
    f"nonsense aegis:{SECRET}@host",
]


@pytest.mark.parametrize("url", BAD_URLS)
def test_errors_do_not_carry_the_password(url: str) -> None:
    with pytest.raises(DatabaseError) as err:
        open_engine(url)
    assert SECRET not in str(err.value), str(err.value)
    assert "127.0.0.1" in str(err.value) or "***@host" in str(err.value), str(err.value)
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_shown_and_scrub_hide_the_password() -> None:
    from aegis_controller.db import scrub, shown

    for url in BAD_URLS[:3]:
        assert SECRET not in shown(url) and "aegis:***@" in shown(url)
        assert scrub(f"failed for {url}: password {SECRET!r} refused", url).count(SECRET) == 0
    assert shown("sqlite:////var/lib/aegis/controller.db") == \
        "sqlite:////var/lib/aegis/controller.db"


def test_settings_do_not_show_the_url() -> None:
    settings = Settings.resolve("/tmp/state", BAD_URLS[0])
    assert SECRET not in repr(settings) and settings.db_url == BAD_URLS[0]


def test_the_cli_does_not_print_the_password(tmp_path: Path) -> None:
    for url in BAD_URLS[1:3]:
        out = subprocess.run([str(Path(sys.executable).parent / "aegis-controller"),
                              "--state-dir", str(tmp_path), "--db", url, "ledger", "show"],
                             capture_output=True, text=True, timeout=60, check=False,
                             env=dict(os.environ))
        assert out.returncode == 2, out.stderr
        assert "cannot use database URL" in out.stderr and SECRET not in out.stderr + out.stdout
