# Copyright: Aegis contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Whether a unit's state (from aegis.fleet.hardening_facts' unit_states) already is what
an ansible.builtin.systemd_service task would make it, so the task can be skipped."""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

DOCUMENTATION = r"""
name: unit_is
short_description: Whether a unit is already enabled or off, active or inactive
version_added: 0.3.0
description:
  - Takes one unit's state as C(aegis.fleet.hardening_facts) reports it in C(unit_states)
    (C(load), C(active), C(enabled)) and says whether it already is as wanted, judged the way
    C(ansible.builtin.systemd_service) judges it, so a task that would change nothing can be
    skipped without a module run.
  - C(enabled) is what C(systemctl is-enabled) accepts (enabled, enabled-runtime, static,
    alias, indirect, generated, transient); C(active) is an ActiveState of active or
    activating. A unit that is not loaded, or whose state is unknown, is never as wanted.
options:
  _input:
    description: The unit's state (C(load), C(active), C(enabled)).
    type: dict
    required: true
  enabled:
    description: V(enabled), V(off) (anything C(systemctl is-enabled) refuses), or V(any).
    type: str
    required: true
  active:
    description: V(active), V(inactive), or V(any).
    type: str
    required: true
author: Aegis contributors
"""

EXAMPLES = r"""
- name: Start the timer unless it runs already
  ansible.builtin.systemd_service:
    name: chkrootkit.timer
    enabled: true
    state: started
  when: not aegis_hardening.unit_states['chkrootkit.timer'] | aegis.fleet.unit_is('enabled', 'active')
"""

RETURN = r"""
_value:
  description: Whether the unit already is as wanted.
  type: bool
"""

ENABLED = frozenset(["enabled", "enabled-runtime", "static", "alias", "indirect", "generated", "transient"])
RUNNING = frozenset(["active", "activating"])


def unit_is(state, enabled, active):
    if enabled not in ("enabled", "off", "any") or active not in ("active", "inactive", "any"):
        raise AnsibleFilterError("unit_is: want enabled in enabled|off|any and active in active|inactive|any, "
                                 "got %r, %r" % (enabled, active))
    if not isinstance(state, dict) or state.get("load") not in ("loaded", "masked"):
        return False
    is_enabled = state.get("enabled", "") in ENABLED
    is_running = state.get("active", "") in RUNNING
    return ((enabled == "any" or is_enabled == (enabled == "enabled"))
            and (active == "any" or is_running == (active == "active")))


class FilterModule:
    def filters(self):
        return {"unit_is": unit_is}
