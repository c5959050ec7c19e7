# Copyright: Aegis contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The drop-in aegis.fleet.systemd_sandbox writes, rendered on the controller (the
hardening role's plan compares it with the node's file in one module run)."""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.aegis.fleet.plugins.module_utils.sandbox import (
    DEFAULT_NAME,
    HEADER,
    check_settings,
    render_dropin,
    section,
    valid_unit_name,
)

DOCUMENTATION = r"""
name: sandbox_dropin
short_description: The path and text of the drop-in aegis.fleet.systemd_sandbox writes
version_added: 0.3.0
description:
  - Returns C(path), C(content) and C(mode) of the drop-in C(aegis.fleet.systemd_sandbox)
    writes for O(_input) (a unit) and O(settings), so a play can compare the node's file
    with it (C(aegis.fleet.managed_files) in check mode) before it decides to run the module.
  - O(_input) may also be an item of C(dict2items) (C(key) the unit, C(value) its settings),
    so a map of units to settings maps to a list of drop-ins.
  - Settings the module would refuse are refused here, with the same message.
options:
  _input:
    description: The unit, for example C(cron.service), or a C(dict2items) item.
    type: raw
    required: true
  settings:
    description: Directive names and values, as for the module (with a unit name as O(_input)).
    type: dict
  name:
    description: The drop-in's file name without C(.conf).
    type: str
    default: 50-aegis-sandbox
  allow_unknown:
    description: Accept directive names outside the known sandboxing set (as the module's option).
    type: bool
    default: false
author: Aegis contributors
"""

EXAMPLES = r"""
- name: Would cron's sandbox drop-in change?
  aegis.fleet.managed_files:
    files:
      - "{{ 'cron.service' | aegis.fleet.sandbox_dropin({'PrivateTmp': true}) }}"
  check_mode: true
"""

RETURN = r"""
_value:
  description: C(path), C(content) and C(mode) (V(0644)) of the drop-in.
  type: dict
"""


def sandbox_dropin(unit, settings=None, name=DEFAULT_NAME, allow_unknown=False):
    if isinstance(unit, dict) and settings is None:
        unit, settings = unit.get("key"), unit.get("value")
    if not isinstance(unit, str) or not valid_unit_name(unit):
        raise AnsibleFilterError("sandbox_dropin: %r is not a service, socket, mount or swap unit name" % (unit,))
    if not isinstance(settings, dict) or not settings:
        raise AnsibleFilterError("sandbox_dropin: settings for %s must be a non-empty dict of directives" % unit)
    errors = check_settings(settings, allow_unknown)
    if errors:
        raise AnsibleFilterError("sandbox_dropin: settings for %s: %s" % (unit, "; ".join(errors)))
    return {"path": "/etc/systemd/system/%s.d/%s.conf" % (unit, name),
            "content": render_dropin(settings, HEADER, section(unit)), "mode": "0644"}


class FilterModule:
    def filters(self):
        return {"sandbox_dropin": sandbox_dropin}
