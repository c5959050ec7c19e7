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
    restores the previous drop-in and fails.
options:
  unit:
    description: The unit to sandbox, for example C(cron.service). It must be loaded on the node.
    type: str
    required: true
  settings:
    description:
      - Directive names and values. Booleans become C(yes)/C(no), lists are joined with spaces.
      - Names must be sandboxing or execution directives this module knows, unless O(allow_unknown=true).
    type: dict
    default: {}
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
    description: Report the exposure from C(systemd-analyze security) before and after.
    type: bool
    default: true
  allow_unknown:
    description: Accept directive names outside the known sandboxing set.
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    description: Computes and reports the change without making it.
  diff_mode:
    support: full
    description: Shows the before and after state.
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
  description: Overall exposure (0 safest, 10 least safe) before this run, if O(score=true).
  returned: always
  type: float
  sample: 9.6
exposure_after:
  description: Overall exposure after this run; in check mode, the current value.
  returned: always
  type: float
  sample: 4.2
restarted:
  description: Whether the unit was restarted.
  returned: always
  type: bool
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.aegis.fleet.plugins.module_utils.changes import text_diff
from ansible_collections.aegis.fleet.plugins.module_utils.sandbox import (
    KNOWN_DIRECTIVES,
    exposure,
    render_dropin,
    valid_unit_name,
)


def _read(path):
    try:
        with open(path) as fh:
            return fh.read()
    except FileNotFoundError:
        return None


def _write(path, text):
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    tmp = path + ".aegis-tmp"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            unit=dict(type="str", required=True),
            settings=dict(type="dict", default={}),
            name=dict(type="str", default="50-aegis-sandbox"),
            state=dict(type="str", default="present", choices=["present", "absent"]),
            restart=dict(type="bool", default=False),
            score=dict(type="bool", default=True),
            allow_unknown=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    p = module.params
    unit = p["unit"]
    if not valid_unit_name(unit):
        module.fail_json(msg="unit: %r is not a unit name; write it in full, e.g. 'cron.service'" % unit)
    if "/" in p["name"] or not p["name"]:
        module.fail_json(msg="name: %r must be a plain file name without '/' (e.g. 50-aegis-sandbox)" % p["name"])
    unknown = sorted(set(p["settings"]) - KNOWN_DIRECTIVES)
    if unknown and not p["allow_unknown"]:
        module.fail_json(msg="settings: unknown directive(s) %s; use systemd.exec(5) sandboxing directives "
                             "such as ProtectSystem or NoNewPrivileges, or set allow_unknown=true" % ", ".join(unknown))
    if p["state"] == "present" and not p["settings"]:
        module.fail_json(msg="settings: give at least one directive for state=present (or use state=absent)")

    systemctl = module.get_bin_path("systemctl", required=True)
    rc, out, _err = module.run_command([systemctl, "show", "-p", "LoadState", "--value", unit])
    if rc != 0 or out.strip() != "loaded":
        module.fail_json(msg="unit: %s is not loaded on this node (LoadState=%s); check the name with "
                             "'systemctl list-unit-files'" % (unit, out.strip() or "unknown"))

    path = "/etc/systemd/system/%s.d/%s.conf" % (unit, p["name"])
    before = _read(path)
    after = render_dropin(p["settings"], "Managed by aegis.fleet.systemd_sandbox") if p["state"] == "present" else None
    changed = before != after
    score_before = exposure(module, unit) if p["score"] else None
    result = dict(changed=changed, path=path, exposure_before=score_before, exposure_after=score_before,
                  restarted=False)
    if module._diff:
        result["diff"] = text_diff(before, after, path)
    if not changed or module.check_mode:
        module.exit_json(**result)

    if after is None:
        os.unlink(path)
    else:
        _write(path, after)
        analyze = module.get_bin_path("systemd-analyze")
        if analyze:
            _rc, vout, verr = module.run_command([analyze, "verify", unit])
            complaints = [ln for ln in (vout + verr).splitlines() if path in ln]
            if complaints:
                if before is None:
                    os.unlink(path)
                else:
                    _write(path, before)
                module.fail_json(msg="systemd rejects the drop-in for %s (restored the previous one): %s"
                                     % (unit, "; ".join(complaints)))
    module.run_command([systemctl, "daemon-reload"], check_rc=True)
    if p["restart"]:
        rc, _o, _e = module.run_command([systemctl, "is-active", "--quiet", unit])
        if rc == 0:
            rc, out, err = module.run_command([systemctl, "restart", unit])
            if rc != 0:
                module.fail_json(msg="%s did not restart with its new sandbox: %s; see journalctl -u %s"
                                     % (unit, (err or out).strip(), unit), path=path)
            result["restarted"] = True
    if p["score"]:
        result["exposure_after"] = exposure(module, unit)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
