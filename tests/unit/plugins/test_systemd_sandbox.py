"""systemd_sandbox's drop-in replacement keeps a unit working: a drop-in systemd rejects,
or one the unit does not come back up with, is replaced by the previous one (stand-in
AnsibleModule; the drop-in lives in a temporary directory)."""

import re

import pytest

from ansible_collections.aegis.fleet.plugins.modules.systemd_sandbox import Dropin

pytestmark = pytest.mark.unit
UNIT = "cron.service"


class Failed(Exception):
    pass


class FakeModule:
    """systemctl and systemd-analyze answers from ``replies`` (argv without the binary ->
    (rc, out, err), or a list of answers given in turn); every call is recorded."""

    def __init__(self, replies):
        self.replies = replies
        self.calls = []

    def get_bin_path(self, name, required=False, opt_dirs=None):
        return "/usr/bin/" + name

    def run_command(self, argv, check_rc=False, **_kw):
        args = tuple(argv[1:])
        self.calls.append(args)
        reply = self.replies.get(args, (0, "", ""))
        return reply.pop(0) if isinstance(reply, list) else reply

    def fail_json(self, msg, **kw):
        raise Failed(msg)


def _dropin(tmp_path, replies):
    replies.setdefault(("show", "-p", "LoadState", "--value", UNIT), (0, "loaded\n", ""))
    module = FakeModule(replies)
    dropin = Dropin(module, UNIT, "50-aegis-sandbox")
    dropin.path = str(tmp_path / "cron.service.d" / "50-aegis-sandbox.conf")
    return module, dropin


def test_a_unit_that_is_not_loaded_is_named(tmp_path):
    with pytest.raises(Failed, match=re.escape("cron.service is not loaded on this node "
                                               "(LoadState=not-found)")):
        _dropin(tmp_path, {("show", "-p", "LoadState", "--value", UNIT): (0, "not-found\n", "")})


def test_apply_writes_reloads_and_restarts_an_active_unit(tmp_path):
    module, dropin = _dropin(tmp_path, {})
    assert dropin.apply(None, "[Service]\nPrivateTmp=yes\n", restart=True) is True
    assert dropin.current() == "[Service]\nPrivateTmp=yes\n"
    assert ("daemon-reload",) in module.calls and ("restart", UNIT) in module.calls


def test_a_rejected_dropin_puts_the_previous_one_back(tmp_path):
    path = str(tmp_path / "cron.service.d" / "50-aegis-sandbox.conf")
    complaint = f"{path}:3: Unknown key 'Bogus'\n"
    module, dropin = _dropin(tmp_path, {("verify", UNIT): (1, "", complaint)})
    with pytest.raises(Failed, match=r"rejects the drop-in for cron\.service .*Unknown key"):
        dropin.apply("old\n", "new\n", restart=True)
    assert dropin.current() == "old\n"
    assert ("restart", UNIT) not in module.calls


def test_a_unit_that_does_not_come_back_gets_the_previous_dropin(tmp_path):
    module, dropin = _dropin(tmp_path, {
        ("is-active", "--quiet", UNIT): [(0, "", ""), (3, "", "")],
        ("restart", UNIT): [(1, "", "Job failed.\n"), (0, "", "")],
    })
    with pytest.raises(Failed, match=re.escape(
            "did not come back up with the new sandbox (Job failed.); the previous drop-in is back "
            "and the unit was restarted with it (running)")):
        dropin.apply(None, "new\n", restart=True)
    assert dropin.current() is None
    assert module.calls.count(("daemon-reload",)) == 2


def test_an_inactive_unit_is_not_restarted(tmp_path):
    module, dropin = _dropin(tmp_path, {("is-active", "--quiet", UNIT): (3, "", "")})
    assert dropin.apply(None, "new\n", restart=True) is False
    assert ("restart", UNIT) not in module.calls
