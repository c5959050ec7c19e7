# Copyright: Aegis contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""systemctl for the aegis.fleet modules: the one place that asks systemd about a unit
(load state, activity, a property) or tells it what to do (daemon-reload, restart, stop).

``Systemd`` is the service manager on the managed node and ``Unit`` one unit of it, in the
spirit of ansible.posix's ``FirewallTransaction`` base: the modules say what they want
from a unit, and the command lines live here once."""

from __future__ import annotations


class Systemd:
    """The systemctl command on the managed node.

    With ``required=False`` a node without systemctl is not an error: ``available`` is
    then false and the caller decides what that means.
    """

    def __init__(self, module, required=True):
        self.module = module
        self.systemctl = module.get_bin_path("systemctl", required=required)

    @property
    def available(self):
        return bool(self.systemctl)

    def run(self, args, check_rc=False):
        """(rc, stdout, stderr) of ``systemctl ARGS``; with ``check_rc`` a failure fails the module."""
        return self.module.run_command([self.systemctl, *args], check_rc=check_rc)

    def daemon_reload(self):
        """Make systemd read the unit files and drop-ins again (a failure fails the module)."""
        self.run(["daemon-reload"], check_rc=True)

    def stop(self, *units):
        """Stop ``units`` in one call; units that are not loaded are no error."""
        self.run(["stop", *units])

    def reset_failed(self, *units):
        """Forget the failed state of ``units`` so their names can be used again."""
        self.run(["reset-failed", *units])

    def unit(self, name):
        return Unit(self, name)


class Unit:
    """One unit, e.g. ``cron.service`` or ``aegis-nft-guard-rollback.timer``."""

    def __init__(self, systemd, name):
        self.systemd = systemd
        self.name = name

    def show(self, prop):
        """The value of the unit property ``prop`` (``systemctl show -p PROP --value``), or
        None when systemctl fails."""
        rc, out, _err = self.systemd.run(["show", "-p", prop, "--value", self.name])
        return out.strip() if rc == 0 else None

    def load_state(self):
        """``loaded``, ``not-found``, ``masked`` ... as systemd says; ``unknown`` when it cannot say."""
        state = self.show("LoadState")
        return "unknown" if state is None else state

    def is_loaded(self):
        return self.load_state() == "loaded"

    def is_active(self):
        rc, _out, _err = self.systemd.run(["is-active", "--quiet", self.name])
        return rc == 0

    def restart(self):
        """(rc, what systemctl said): a failed restart is the caller's to handle."""
        rc, out, err = self.systemd.run(["restart", self.name])
        return rc, (err or out).strip()
