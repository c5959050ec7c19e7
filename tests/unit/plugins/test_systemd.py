"""The one systemctl wrapper of the modules and the rollback guard built on it, against a
stand-in AnsibleModule that records the command lines (no node needed)."""

import pytest

from ansible_collections.aegis.fleet.plugins.module_utils import rollback_guard
from ansible_collections.aegis.fleet.plugins.module_utils.rollback_guard import Guard
from ansible_collections.aegis.fleet.plugins.module_utils.systemd import Systemd

pytestmark = pytest.mark.unit


class FakeModule:
    """Answers run_command from ``replies`` (argv tuple without the binary -> (rc, out, err))."""

    def __init__(self, replies=None, bins=("systemctl",)):
        self.replies = replies or {}
        self.bins = bins
        self.calls = []

    def get_bin_path(self, name, required=False, opt_dirs=None):
        if name in self.bins:
            return "/usr/bin/" + name
        if required:
            raise AssertionError(f"required binary {name} missing")
        return None

    def run_command(self, argv, check_rc=False, **_kw):
        args = tuple(argv[1:])
        self.calls.append(args)
        rc, out, err = self.replies.get(args, (0, "", ""))
        if check_rc and rc != 0:
            raise AssertionError("check_rc failure")
        return rc, out, err


def test_unit_load_state_and_activity():
    module = FakeModule({
        ("show", "-p", "LoadState", "--value", "cron.service"): (0, "loaded\n", ""),
        ("show", "-p", "LoadState", "--value", "nope.service"): (1, "", "bus error"),
        ("is-active", "--quiet", "cron.service"): (3, "", ""),
    })
    systemd = Systemd(module)
    assert systemd.unit("cron.service").load_state() == "loaded"
    assert systemd.unit("cron.service").is_loaded()
    assert systemd.unit("nope.service").load_state() == "unknown"
    assert not systemd.unit("nope.service").is_loaded()
    assert not systemd.unit("cron.service").is_active()


def test_unit_restart_reports_what_systemctl_said():
    module = FakeModule({("restart", "cron.service"): (1, "", "Job failed.\n")})
    assert Systemd(module).unit("cron.service").restart() == (1, "Job failed.")


def test_manager_commands_take_several_units_in_one_call():
    module = FakeModule()
    systemd = Systemd(module)
    systemd.daemon_reload()
    systemd.stop("a.timer", "a.service")
    systemd.reset_failed("a.timer", "a.service")
    assert module.calls == [("daemon-reload",), ("stop", "a.timer", "a.service"),
                            ("reset-failed", "a.timer", "a.service")]


def test_systemctl_may_be_optional():
    assert not Systemd(FakeModule(bins=()), required=False).available
    assert Systemd(FakeModule()).available


def test_guard_status_and_rollback_result(tmp_path, monkeypatch):
    monkeypatch.setattr(rollback_guard, "GUARD_DIR", str(tmp_path))
    armed = FakeModule({("is-active", "--quiet", "g-rollback.timer"): (0, "", "")})
    assert Guard(armed, "g").status() == "armed"
    idle = FakeModule({("is-active", "--quiet", "g-rollback.timer"): (3, "", ""),
                       ("show", "-p", "Result", "--value", "g-rollback.service"): (1, "", "")})
    guard = Guard(idle, "g")
    assert guard.status() == "none"
    assert guard.rollback_result() == "unknown"
    (tmp_path / "g.nft").write_text("table inet a {}\n")
    assert guard.status() == "fired"
    guard.disarm()
    assert not (tmp_path / "g.nft").exists()
    assert idle.calls[-2:] == [("stop", "g-rollback.timer", "g-rollback.service"),
                               ("reset-failed", "g-rollback.timer", "g-rollback.service")]
