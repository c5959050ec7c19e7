# Copyright: Aegis contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Freezing a node's workloads for a hard quarantine: the services of ``system.slice``.

With the unified cgroup hierarchy (cgroup v2, Debian 12's default) systemd freezes a unit
with the kernel's cgroup freezer (``systemctl freeze UNIT``, ``FreezerState=frozen``): its
processes stop and nothing they fork escapes. systemd supports that on cgroup v2 only; on
a node booted with the legacy or hybrid hierarchy (cgroup v1, where systemd does not
manage the freezer controller) the fallback is ``SIGSTOP`` to every process of the unit's
cgroup, repeated until no running process is left in it (``method: sigstop``); a thaw
sends ``SIGCONT``. The method in use is reported."""

from __future__ import annotations

import contextlib
import os
import signal
import time

from ansible_collections.aegis.fleet.plugins.module_utils.recovery import keep_unit, parse_show

SLICE = "system.slice"
CGROUP_ROOTS = ("/sys/fs/cgroup", "/sys/fs/cgroup/unified", "/sys/fs/cgroup/systemd")


def own_cgroup(cgroup, unit):
    """Whether ``cgroup`` is the unit's own cgroup in system.slice."""
    return cgroup.endswith("/%s/%s" % (SLICE, unit))


class Freezer:
    def __init__(self, module, systemd, cgroup_root="/sys/fs/cgroup"):
        self.module = module
        self.systemd = systemd
        self.cgroup_root = cgroup_root
        unified = os.path.exists(os.path.join(cgroup_root, "cgroup.controllers"))
        self.method = "cgroup" if unified else "sigstop"

    # -- which units --------------------------------------------------------------------------
    def services(self):
        """The loaded, active services of system.slice: ``{name: {FreezerState, ControlGroup}}``."""
        rc, out, err = self.systemd.run(["list-units", "--type=service", "--state=active",
                                         "--no-legend", "--plain", "--no-pager"])
        if rc != 0:
            self.module.fail_json(msg="systemctl list-units failed: %s" % (err or out).strip())
        names = [line.split()[0] for line in out.splitlines() if line.split()]
        if not names:
            return {}
        rc, out, err = self.systemd.run(["show", "-p", "Id,Slice,FreezerState,ControlGroup,SubState",
                                         *names])
        if rc != 0:
            self.module.fail_json(msg="systemctl show failed: %s" % (err or out).strip())
        # only services with processes: a oneshot that has exited has nothing to freeze,
        # and a unit without its own cgroup under system.slice is never signalled (the path
        # is the full one where systemd shares the host's cgroup namespace, as in a
        # container on cgroup v1: /machine.slice/.../system.slice/UNIT)
        return dict((u["Id"], u) for u in parse_show(out)
                    if u.get("Slice") == SLICE and u.get("Id") and u.get("SubState") == "running"
                    and own_cgroup(u.get("ControlGroup", ""), u["Id"]))

    @staticmethod
    def split(services, keep):
        """(to freeze, kept): the system.slice services the allow-list does not keep."""
        freeze = sorted(n for n in services if not keep_unit(n, keep))
        kept = sorted(n for n in services if keep_unit(n, keep))
        return freeze, kept

    # -- one unit -----------------------------------------------------------------------------
    def _pids(self, cgroup):
        if "/" + SLICE + "/" not in cgroup:
            return []
        for root in CGROUP_ROOTS:
            path = os.path.join(root, cgroup.lstrip("/"), "cgroup.procs")
            if os.path.exists(path):
                with open(path) as fh:
                    return [int(p) for p in fh.read().split()]
        return []

    @staticmethod
    def _state(pid):
        try:
            with open("/proc/%d/stat" % pid) as fh:
                stat = fh.read()
        except OSError:
            return None
        return stat[stat.rfind(")") + 2:].split()[0]

    def frozen(self, unit):
        """Whether a unit is frozen (cgroup: FreezerState; sigstop: every process stopped)."""
        if self.method == "cgroup":
            return unit.get("FreezerState") in ("frozen", "freezing")
        pids = self._pids(unit.get("ControlGroup", ""))
        return bool(pids) and all(self._state(p) in ("T", "t", None) for p in pids)

    def _systemctl(self, verb, name):
        rc, out, err = self.systemd.run([verb, name])
        if rc != 0:
            self.module.fail_json(msg="systemctl %s %s failed: %s" % (verb, name, (err or out).strip()))

    def freeze(self, unit):
        name = unit["Id"]
        if self.method == "cgroup":
            self._systemctl("freeze", name)
            return
        for _attempt in range(20):  # a process may fork while its siblings are being stopped
            running = [p for p in self._pids(unit.get("ControlGroup", ""))
                       if self._state(p) not in ("T", "t", None)]
            if not running:
                return
            for pid in running:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
            time.sleep(0.05)
        self.module.fail_json(msg="%s: processes keep appearing while being stopped (SIGSTOP); "
                                  "stop the unit instead" % name)

    def thaw(self, unit):
        if self.method == "cgroup":
            self._systemctl("thaw", unit["Id"])
            return
        for pid in self._pids(unit.get("ControlGroup", "")):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
