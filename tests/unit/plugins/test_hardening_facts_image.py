"""hardening_facts' image checks: which packages dpkg has installed (one query for all, a
name dpkg does not know is reported missing) and the modules a PAM file names."""

from __future__ import annotations

import pytest

from ansible_collections.aegis.fleet.plugins.modules.hardening_facts import (
    installed_packages,
    pam_modules,
)

pytestmark = pytest.mark.unit


class _Module:
    """Stands in for AnsibleModule's command runner with dpkg-query's real output shape."""

    def __init__(self, out: str) -> None:
        self.out = out
        self.calls: list[list[str]] = []

    def get_bin_path(self, name, required=False, opt_dirs=None):
        return f"/usr/bin/{name}"

    def run_command(self, argv):
        self.calls.append(argv)
        return 1, self.out, "dpkg-query: no packages found matching nosuch\n"


def test_one_query_reports_installed_removed_and_unknown_packages() -> None:
    module = _Module("acct ii \nsysstat rc \nlibpam-tmpdir:amd64 ii \n")
    state = installed_packages(module, ["acct", "sysstat", "libpam-tmpdir", "nosuch"])
    assert state == {"acct": True, "sysstat": False, "libpam-tmpdir": True, "nosuch": False}
    assert len(module.calls) == 1
    assert module.calls[0][-4:] == ["acct", "sysstat", "libpam-tmpdir", "nosuch"]
    assert installed_packages(_Module(""), []) == {}


def test_pam_modules_in_order_without_comments(tmp_path) -> None:
    pam = tmp_path / "common-session"
    pam.write_text("# pam_unix.so in a comment\n"
                   "session [default=1] pam_permit.so\n"
                   "session [success=1 default=ignore] pam_unix.so nullok\n"
                   "session optional pam_tmpdir.so # per-user TMPDIR\n")
    assert pam_modules(str(pam)) == ["pam_permit.so", "pam_unix.so", "pam_tmpdir.so"]
    assert pam_modules(str(tmp_path / "missing")) == []
