"""The role's one-call file modules: managed_files (many paths, one run, KEY value files
such as login.defs, validation before a file is replaced) and sysctls (a sysctl.d file and
the live values), run on files in a temporary directory; hardening_facts' parsers of fstab
and systemctl show; the unit_is filter."""

from __future__ import annotations

import os
import stat

import pytest

from ansible_collections.aegis.fleet.plugins.filter.unit_is import unit_is
from ansible_collections.aegis.fleet.plugins.module_utils import key_lines, sysctl_values
from ansible_collections.aegis.fleet.plugins.modules import hardening_facts, sysctls
from ansible_collections.aegis.fleet.plugins.modules import managed_files as mf

pytestmark = pytest.mark.unit
ME = {"owner": str(os.getuid()), "group": str(os.getgid())}


def _entry(path, **kw):
    return dict({"path": str(path), "state": "file", "content": None, "mode": None}, **ME, **kw)


def _converge(entries, check_mode=False):
    wanted = [mf.plan(e, i) for i, e in enumerate(entries)]
    return [d for d in (mf.converge(w, check_mode) for w in wanted) if d is not None]


def test_files_are_written_once_and_a_second_run_changes_nothing(tmp_path):
    entries = [
        _entry(tmp_path / "d", state="directory", mode="0750"),
        _entry(tmp_path / "d" / "a.conf", content="a = 1\n", mode="0640"),
        _entry(tmp_path / "gone", state="absent"),
    ]
    (tmp_path / "gone").write_text("x")
    # check mode reports every change and writes nothing
    assert len(_converge(entries, check_mode=True)) == 3
    assert not (tmp_path / "d").exists() and (tmp_path / "gone").exists()
    diffs = _converge(entries)
    assert [d["before_header"] for d in diffs] == [
        str(tmp_path / "d"),
        str(tmp_path / "d" / "a.conf"),
        str(tmp_path / "gone"),
    ]
    assert (tmp_path / "d" / "a.conf").read_text() == "a = 1\n"
    assert stat.S_IMODE((tmp_path / "d" / "a.conf").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o750
    assert not (tmp_path / "gone").exists()
    assert _converge(entries) == []
    assert _converge(entries, check_mode=True) == []


def test_content_and_mode_drift_are_put_back_with_a_diff(tmp_path):
    path = tmp_path / "f"
    entries = [_entry(path, content="wanted\n", mode="0600")]
    _converge(entries)
    path.write_text("edited\n")
    [diff] = _converge(entries)
    assert (diff["before"], diff["after"]) == ("edited\n", "wanted\n")
    path.chmod(0o644)
    [diff] = _converge(entries)
    assert "mode=0644" in diff["before"] and "mode=0600" in diff["after"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_exists_sets_modes_by_kind_and_skips_what_is_missing(tmp_path):
    (tmp_path / "dir").mkdir(mode=0o755)
    (tmp_path / "file").write_text("x")
    (tmp_path / "file").chmod(0o644)
    mode = {"file": "0600", "directory": "0700"}
    entries = [
        _entry(tmp_path / name, state="exists", mode=mode) for name in ("dir", "file", "none")
    ]
    assert len(_converge(entries)) == 2
    assert stat.S_IMODE((tmp_path / "dir").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "file").stat().st_mode) == 0o600
    assert not (tmp_path / "none").exists()
    assert _converge(entries) == []


@pytest.mark.parametrize(
    ("entry", "needle"),
    [
        ({"state": "file", "mode": "0644"}, "state=file needs content"),
        ({"state": "file", "content": "x"}, "needs a mode"),
        ({"state": "file", "content": "x", "mode": "644x"}, "is not octal"),
        ({"state": "absent", "content": "x"}, "content is only for state=file"),
        (
            {"state": "file", "content": "x", "mode": "0644", "owner": "no-such-user-aegis"},
            "owner 'no-such-user-aegis' does not exist",
        ),
        (
            {"state": "exists", "mode": {"socket": "0600"}},
            "mode keys must be 'file' and 'directory'",
        ),
    ],
)
def test_bad_entries_are_refused_naming_the_entry(tmp_path, entry, needle):
    with pytest.raises(ValueError, match=needle) as err:
        mf.plan(dict(_entry(tmp_path / "x"), **entry), 3)
    assert "files[3]" in str(err.value)


def test_a_relative_path_is_refused():
    with pytest.raises(ValueError, match="must be absolute"):
        mf.plan(_entry("etc/x", content="x", mode="0644"), 0)


def test_a_file_in_a_missing_directory_says_to_add_the_directory(tmp_path):
    with pytest.raises(ValueError, match="add it before this entry with state=directory"):
        _converge([_entry(tmp_path / "nodir" / "f", content="x", mode="0644")])


# -- sysctls ---------------------------------------------------------------------------


@pytest.fixture
def proc_sys(tmp_path):
    root = tmp_path / "proc-sys"
    for name, value in (
        ("net.ipv4.tcp_syncookies", "0"),
        ("net.ipv4.tcp_rmem", "4096\t131072\t6291456"),
    ):
        path = sysctl_values.proc_path(name, str(root))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as fh:
            fh.write(value + "\n")
    return str(root)


def test_sysctls_compare_live_values_as_the_kernel_prints_them(proc_sys):
    wanted = {"net.ipv4.tcp_syncookies": 1, "net.ipv4.tcp_rmem": "4096 131072  6291456"}
    assert sysctls.check(wanted, proc_sys) == []
    current = sysctls.live(wanted, proc_sys)
    assert current["net.ipv4.tcp_rmem"] == sysctl_values.normal(wanted["net.ipv4.tcp_rmem"])
    assert current["net.ipv4.tcp_syncookies"] != sysctl_values.normal(
        wanted["net.ipv4.tcp_syncookies"]
    )
    assert sysctl_values.render_conf(wanted).splitlines()[1:] == [
        "net.ipv4.tcp_syncookies = 1",
        "net.ipv4.tcp_rmem = 4096 131072 6291456",
    ]


def test_sysctls_name_every_bad_key_before_anything_is_written(proc_sys):
    problems = sysctls.check(
        {"net.ipv4.no_such": 1, "bad name": 1, "net.ipv4.tcp_syncookies": [1]}, proc_sys
    )
    assert any("net.ipv4.no_such: this kernel has no such sysctl" in p for p in problems)
    assert any("'bad name' is not a sysctl name" in p for p in problems)
    assert any(
        "net.ipv4.tcp_syncookies: the value must be a number or a string" in p for p in problems
    )


# -- keys (login.defs) ---------------------------------------------------------------------------

LOGIN_DEFS = "# comment\nPASS_MAX_DAYS\t99999\n#UMASK\t022\nPASS_MAX_DAYS 5\nLOGIN_RETRIES 5\n"


def test_config_keys_set_active_lines_uncomment_once_and_append_the_rest():
    text, changed = key_lines.set_keys(
        LOGIN_DEFS,
        {"PASS_MAX_DAYS": "90", "UMASK": "027", "ENCRYPT_METHOD": "YESCRYPT", "LOGIN_RETRIES": "5"},
    )
    assert text == (
        "# comment\nPASS_MAX_DAYS\t90\nUMASK\t027\nPASS_MAX_DAYS\t90\n"
        "LOGIN_RETRIES\t5\nENCRYPT_METHOD\tYESCRYPT\n"
    )
    # LOGIN_RETRIES had another separator: rewritten, so reported
    assert changed == ["PASS_MAX_DAYS", "UMASK", "ENCRYPT_METHOD", "LOGIN_RETRIES"]
    again, changed = key_lines.set_keys(
        text,
        {"PASS_MAX_DAYS": "90", "UMASK": "027", "ENCRYPT_METHOD": "YESCRYPT", "LOGIN_RETRIES": "5"},
    )
    assert (again, changed) == (text, [])


def test_a_key_that_is_a_prefix_of_another_does_not_touch_it():
    text, _ = key_lines.set_keys("PASS_MAX_DAYS_X 1\n", {"PASS_MAX_DAYS": "90"})
    assert text == "PASS_MAX_DAYS_X 1\nPASS_MAX_DAYS\t90\n"


# -- hardening_facts parsers ----------------------------------------------------------------



def test_systemctl_show_blocks_come_back_in_the_order_asked():
    out = (
        "LoadState=loaded\nActiveState=active\nUnitFileState=enabled\n\n"
        "LoadState=not-found\nActiveState=inactive\nUnitFileState=\n\n"
        "LoadState=masked\nActiveState=inactive\nUnitFileState=masked\n"
    )
    assert hardening_facts.parse_systemctl_show(out) == [
        {"load": "loaded", "active": "active", "enabled": "enabled"},
        {"load": "not-found", "active": "inactive", "enabled": ""},
        {"load": "masked", "active": "inactive", "enabled": "masked"},
    ]


def test_keys_of_an_existing_file_are_set_keeping_its_mode_and_other_lines(tmp_path):
    path = tmp_path / "login.defs"
    path.write_text(LOGIN_DEFS)
    path.chmod(0o640)
    entry = dict(
        _entry(path, state="keys", keys={"PASS_MAX_DAYS": 90, "UMASK": "027"}), separator="\t"
    )
    [diff] = _converge([entry], check_mode=True)
    assert path.read_text() == LOGIN_DEFS
    [diff] = _converge([entry])
    assert diff["after"] == path.read_text()
    assert "# comment\n" in path.read_text() and "UMASK\t027\n" in path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert _converge([entry]) == []
    with pytest.raises(ValueError, match="edits a file the system already has"):
        _converge([dict(entry, path=str(tmp_path / "none"))])
    with pytest.raises(ValueError, match=r"keeps the file.s mode; leave mode out"):
        mf.plan(dict(entry, mode="0644"), 0)


def test_content_that_fails_validation_leaves_the_file_as_it_was(tmp_path):
    path = tmp_path / "conf"
    path.write_text("good\n")
    check = "grep -q good %s"
    entries = [_entry(path, content="bad\n", mode="0644", validate=check)]
    with pytest.raises(
        ValueError,
        match="validated with 'grep -q good %s', the new content is refused "
        "\\(rc 1; the file is unchanged\\)",
    ):
        _converge(entries)
    assert path.read_text() == "good\n"
    _converge([_entry(path, content="good too\n", mode="0644", validate=check)])
    assert path.read_text() == "good too\n"
    with pytest.raises(ValueError, match="validate must contain %s"):
        mf.plan(_entry(path, content="x", mode="0644", validate="true"), 0)


def test_fstab_entries_of_the_temporary_directories_with_dump_and_pass_filled_in():
    text = ("# /tmp tmpfs tmpfs defaults 0 0\n"
            "UUID=1 / ext4 defaults 0 1\n"
            "tmpfs /tmp tmpfs nodev,nosuid 0 0\n"
            "/var/tmp /var/tmp none bind,nodev\n"
            "tmpfs /tmp tmpfs later 0 0\n")
    assert hardening_facts.fstab_entries(text, ("/tmp", "/var/tmp", "/dev/shm")) == {
        "/tmp": ["tmpfs", "/tmp", "tmpfs", "nodev,nosuid", "0", "0"],
        "/var/tmp": ["/var/tmp", "/var/tmp", "none", "bind,nodev", "0", "0"]}


@pytest.mark.parametrize(("state", "enabled", "active", "expected"), [
    ({"load": "loaded", "active": "active", "enabled": "enabled"}, "enabled", "active", True),
    ({"load": "loaded", "active": "active", "enabled": "static"}, "enabled", "active", True),
    ({"load": "loaded", "active": "inactive", "enabled": "enabled"}, "enabled", "active", False),
    ({"load": "loaded", "active": "inactive", "enabled": "disabled"}, "off", "inactive", True),
    ({"load": "masked", "active": "inactive", "enabled": "masked"}, "off", "inactive", True),
    ({"load": "masked", "active": "inactive", "enabled": "masked"}, "enabled", "active", False),
    ({"load": "not-found", "active": "inactive", "enabled": ""}, "off", "inactive", False),
    ({}, "off", "any", False),
])
def test_unit_is_judges_like_systemd_service(state, enabled, active, expected):
    assert unit_is(state, enabled, active) is expected


def test_each_value_is_read_again_before_it_is_written(proc_sys):
    """A write that changes another setting (forwarding off sets accept_redirects to 1 in
    the kernel) does not leave that setting wrong: it is compared after the earlier writes.
    (Seen: the second converge found all.accept_redirects at 1 again.)"""
    forwarding = sysctl_values.proc_path("net.ipv4.conf.all.forwarding", proc_sys)
    redirects = sysctl_values.proc_path("net.ipv4.conf.all.accept_redirects", proc_sys)
    os.makedirs(os.path.dirname(forwarding), exist_ok=True)
    for path, value in ((forwarding, "1"), (redirects, "0")):
        with open(path, "w") as fh:
            fh.write(value + "\n")

    real_open = open

    def kernel_open(path, mode="r", *a, **kw):  # the kernel's side effect on a write
        fh = real_open(path, mode, *a, **kw)
        if path == forwarding and "w" in mode:
            with real_open(redirects, "w") as other:
                other.write("1\n")
        return fh

    wanted = {"net.ipv4.conf.all.forwarding": 0, "net.ipv4.conf.all.accept_redirects": 0}
    before = {}
    sysctls.open = kernel_open
    try:
        written, failed = sysctls.apply_in_order(wanted, before, proc_sys)
    finally:
        del sysctls.open
    assert failed == []
    assert written == ["net.ipv4.conf.all.forwarding", "net.ipv4.conf.all.accept_redirects"]
    assert sysctl_values.read_sysctls(list(wanted), proc_sys) == {
        "net.ipv4.conf.all.forwarding": "0", "net.ipv4.conf.all.accept_redirects": "0"}
