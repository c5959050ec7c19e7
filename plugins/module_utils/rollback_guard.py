# Copyright: Aegis contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The commit-confirmed rollback guard of aegis.fleet.nft_ruleset: a saved nft script that a
transient systemd timer loads after a timeout unless the change is confirmed."""

from __future__ import annotations

import os

from ansible_collections.aegis.fleet.plugins.module_utils.systemd import Systemd

GUARD_DIR = "/run/aegis/nft-guard"


class Guard:
    """Commit-confirmed: restore the saved tables after a timeout unless confirmed.

    The saved script lives in tmpfs under GUARD_DIR; a transient systemd timer
    ``NAME-rollback.timer`` starts ``NAME-rollback.service``, which loads it.
    """

    def __init__(self, module, name):
        self.module = module
        self.name = name
        self.unit = "%s-rollback" % name
        self.path = os.path.join(GUARD_DIR, "%s.nft" % name)
        self.systemd = Systemd(module)
        self.timer = self.systemd.unit(self.unit + ".timer")
        self.service = self.systemd.unit(self.unit + ".service")

    def status(self):
        """'armed' (timer running), 'fired' (the saved state was restored, or is being
        restored, and nobody confirmed) or 'none'."""
        if self.timer.is_active():
            return "armed"
        if os.path.exists(self.path):
            return "fired"
        return "none"

    def saved(self):
        try:
            with open(self.path) as fh:
                return fh.read()
        except FileNotFoundError:
            return None

    def rollback_result(self):
        """What the rollback service reported (systemd's Result), if systemd still knows it."""
        return self.service.show("Result") or "unknown"

    def _stop_units(self):
        units = [self.timer.name, self.service.name]
        self.systemd.stop(*units)
        self.systemd.reset_failed(*units)

    def disarm(self):
        self._stop_units()
        if os.path.exists(self.path):
            os.unlink(self.path)

    def arm(self, script, timeout, nft_path):
        """Save ``script`` and (re)start the timer; an armed timer is replaced."""
        self._stop_units()
        os.makedirs(GUARD_DIR, mode=0o700, exist_ok=True)
        tmp = self.path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(script)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        run = self.module.get_bin_path("systemd-run", required=True)
        rc, out, err = self.module.run_command([
            run, "--unit", self.unit, "--on-active=%ds" % timeout, "--timer-property=AccuracySec=1s",
            "--description=aegis: restore the nftables tables saved in %s (unconfirmed change)" % self.path,
            nft_path, "-f", self.path,
        ])
        if rc != 0:
            os.unlink(self.path)
            self.module.fail_json(msg="could not arm the rollback guard with systemd-run (nothing was "
                                      "changed): %s" % (err or out).strip())
