#!/usr/bin/python
# Copyright: Aegis contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: systemd_sandbox
short_description: Sandbox a systemd unit with a drop-in and score it
version_added: 0.1.0
description:
  - Writes C(/etc/systemd/system/UNIT.d/NAME.conf) with sandboxing directives, reloads
    systemd, optionally restarts the unit, and reports the exposure that
    C(systemd-analyze security) gives the unit before and after.
  - The drop-in is checked with C(systemd-analyze verify); a directive systemd rejects
    restores the previous drop-in and fails. So does a unit that does not come back up
    after O(restart); the previous drop-in is then put back and the unit restarted with it.
  - Idempotent by comparing the rendered drop-in with the file on the node.
options:
  unit:
    description:
      - The unit to sandbox, with its type, for example C(cron.service). It must be loaded on the node.
      - Services, sockets, mounts and swaps (the units that take execution directives); only
        services get an exposure score.
    type: str
    required: true
  settings:
    description:
      - Directive names and values. Booleans become C(yes)/C(no), lists are joined with spaces.
      - Names must be sandboxing or execution directives this module knows, unless O(allow_unknown=true).
      - Required (non-empty) with O(state=present); ignored with O(state=absent).
    type: dict
  name:
    description: File name of the drop-in, without C(.conf).
    type: str
    default: 50-aegis-sandbox
  state:
    description: V(present) writes the drop-in, V(absent) removes it.
    type: str
    choices: [present, absent]
    default: present
  restart:
    description: Restart the unit when the drop-in changed and the unit is active.
    type: bool
    default: false
  score:
    description:
      - Report the exposure from C(systemd-analyze security) before and after.
      - V(true) (or V(always)) scores on every run; V(changed) only when the drop-in changes
        (a run that changes nothing then returns null scores and saves a second or so per
        unit); V(false) (or V(never)) never.
    type: raw
    default: true
  allow_unknown:
    description: Accept directive names outside the known sandboxing set.
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    description: Computes the change and the diff without writing, reloading or restarting; RV(exposure_after) is then the current score.
  diff_mode:
    support: full
    description: Shows the drop-in file before and after.
  platform:
    support: full
    platforms: posix
    description: Debian-family Linux nodes with systemd.
requirements:
  - systemd on the managed node
author:
  - Aegis contributors (@aegis)
"""

EXAMPLES = r"""
- name: Sandbox cron
  aegis.fleet.systemd_sandbox:
    unit: cron.service
    settings:
      ProtectSystem: full
      ProtectHome: read-only
      PrivateTmp: true
      RestrictAddressFamilies: [AF_UNIX, AF_INET, AF_INET6]
      SystemCallFilter: "@system-service"
    restart: true
  register: cron_sandbox

- name: Show the score
  ansible.builtin.debug:
    msg: "{{ cron_sandbox.exposure_before }} -> {{ cron_sandbox.exposure_after }}"
"""

RETURN = r"""
path:
  description: The drop-in file.
  returned: always
  type: str
  sample: /etc/systemd/system/cron.service.d/50-aegis-sandbox.conf
exposure_before:
  description:
    - Overall exposure (0 safest, 10 least safe) from C(systemd-analyze security) before this run.
    - Null with O(score=false), with O(score=changed) when nothing changed, or for units other than services.
  returned: always
  type: float
  sample: 9.6
exposure_after:
  description: Overall exposure after this run (after the restart, if any); in check mode, the current value.
  returned: always
  type: float
  sample: 4.2
restarted:
  description: Whether the unit was restarted.
  returned: always
  type: bool
  sample: true
"""

import contextlib
import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.aegis.fleet.plugins.module_utils.changes import report
from ansible_collections.aegis.fleet.plugins.module_utils.files import read_text
from ansible_collections.aegis.fleet.plugins.module_utils.sandbox import (
    DEFAULT_NAME,
    HEADER,
    check_settings,
    exposure,
    render_dropin,
    section,
    valid_unit_name,
)
from ansible_collections.aegis.fleet.plugins.module_utils.systemd import Systemd

ARGUMENT_SPEC = dict(
    unit=dict(type="str", required=True),
    settings=dict(type="dict"),
    name=dict(type="str", default=DEFAULT_NAME),
    state=dict(type="str", default="present", choices=["present", "absent"]),
    restart=dict(type="bool", default=False),
    score=dict(type="raw", default=True),
    allow_unknown=dict(type="bool", default=False),
)
REQUIRED_IF = [("state", "present", ["settings"])]
#: what O(score) accepts -> when to score
SCORES = {"true": "always", "yes": "always", "always": "always", "changed": "changed",
          "false": "never", "no": "never", "never": "never"}


def _put(path, text):
    """Write ``text`` atomically, or remove the file (and an emptied drop-in dir) for None."""
    if text is None:
        if os.path.exists(path):
            os.unlink(path)
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(path))  # only when no other drop-in is left
        return
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    tmp = path + ".aegis-tmp"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def check_params(module):
    """Fail with a message naming the option unless the parameters describe a drop-in."""
    p = module.params
    p["settings"] = p["settings"] or {}
    score = SCORES.get(str(p["score"]).lower())
    if score is None:
        module.fail_json(msg="score: %r is not one of true, false, always, changed, never" % (p["score"],))
    p["score"] = score
    if not valid_unit_name(p["unit"]):
        module.fail_json(msg="unit: %r is not a service, socket, mount or swap unit name; write it in full, "
                             "e.g. 'cron.service'" % p["unit"])
    if not p["name"] or "/" in p["name"] or p["name"].startswith("."):
        module.fail_json(msg="name: %r must be a plain file name without '/' (e.g. 50-aegis-sandbox)" % p["name"])
    if p["state"] == "present":
        if not p["settings"]:
            module.fail_json(msg="settings: give at least one directive for state=present (or use state=absent)")
        errors = check_settings(p["settings"], p["allow_unknown"])
        if errors:
            module.fail_json(msg="settings: %s" % "; ".join(errors))


class Dropin:
    """One sandboxing drop-in of one loaded unit: its text now, and putting new text in place
    without leaving the unit broken."""

    def __init__(self, module, unit, name):
        self.module = module
        self.systemd = Systemd(module)
        self.unit = self.systemd.unit(unit)
        load_state = self.unit.load_state()
        if load_state != "loaded":
            module.fail_json(msg="unit: %s is not loaded on this node (LoadState=%s); check the name with "
                                 "'systemctl list-unit-files'" % (unit, load_state or "unknown"))
        self.path = "/etc/systemd/system/%s.d/%s.conf" % (unit, name)

    def current(self):
        return read_text(self.path)

    def verify(self):
        """Complaints of ``systemd-analyze verify`` about the drop-in (empty when it is fine)."""
        analyze = self.module.get_bin_path("systemd-analyze")
        if not analyze:
            return []
        _rc, out, err = self.module.run_command([analyze, "verify", self.unit.name])
        return [line for line in (out + err).splitlines() if self.path in line]

    def apply(self, before, after, restart):
        """Replace the drop-in ``before`` with ``after`` (None: remove it), reload systemd and,
        with ``restart``, restart an active unit; put ``before`` back and fail when systemd
        rejects the drop-in or the unit does not come back up. Returns whether it restarted."""
        name = self.unit.name
        _put(self.path, after)
        if after is not None:
            complaints = self.verify()
            if complaints:
                _put(self.path, before)
                self.module.fail_json(msg="settings: systemd rejects the drop-in for %s (the previous one is "
                                          "back): %s" % (name, "; ".join(complaints)), path=self.path)
        self.systemd.daemon_reload()
        if not (restart and self.unit.is_active()):
            return False
        rc, why = self.unit.restart()
        if rc != 0 or not self.unit.is_active():
            _put(self.path, before)
            self.systemd.daemon_reload()
            back_rc, _why = self.unit.restart()
            state = "running" if back_rc == 0 else "still failing"
            msg = ("%s did not come back up with the new sandbox (%s); the previous drop-in is back and the "
                   "unit was restarted with it (%s). See journalctl -u %s for the directive that breaks it."
                   % (name, why or "inactive after restart", state, name))
            self.module.fail_json(msg=msg, path=self.path)
        return True


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, required_if=REQUIRED_IF, supports_check_mode=True)
    check_params(module)
    p = module.params
    dropin = Dropin(module, p["unit"], p["name"])
    before = dropin.current()
    after = render_dropin(p["settings"], HEADER, section(p["unit"])) if p["state"] == "present" else None
    scoring = p["score"] == "always" or (p["score"] == "changed" and before != after)
    score = exposure(module, p["unit"]) if scoring else None
    result = dict(path=dropin.path, exposure_before=score, exposure_after=score, restarted=False)
    if before != after and not module.check_mode:
        result["restarted"] = dropin.apply(before, after, p["restart"])
        if scoring:
            result["exposure_after"] = exposure(module, p["unit"])
    report(module, before, after, dropin.path, **result)


if __name__ == "__main__":
    main()
