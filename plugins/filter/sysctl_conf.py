# Copyright: Aegis contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The sysctl.d file aegis.fleet.sysctls writes, rendered on the controller (the hardening
role's plan compares it with the node's file in one module run)."""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.aegis.fleet.plugins.module_utils.sysctl_values import render_conf

DOCUMENTATION = r"""
name: sysctl_conf
short_description: The sysctl.d file aegis.fleet.sysctls writes for some values
version_added: 0.3.0
description:
  - Returns the exact text C(aegis.fleet.sysctls) writes for O(_input), so a play can
    compare the node's file with it (C(aegis.fleet.managed_files) in check mode) before it
    decides to run the module.
options:
  _input:
    description: Sysctl name to value.
    type: dict
    required: true
author: Aegis contributors
"""

EXAMPLES = r"""
- name: Would the network sysctls file change?
  aegis.fleet.managed_files:
    files:
      - {path: /etc/sysctl.d/90-aegis-net.conf, mode: "0644", content: "{{ harden_sysctl_net | aegis.fleet.sysctl_conf }}"}
  check_mode: true
"""

RETURN = r"""
_value:
  description: The file's text.
  type: str
"""


def sysctl_conf(values):
    if not isinstance(values, dict):
        raise AnsibleFilterError("sysctl_conf: expected a dict of sysctl name to value, got %r" % (values,))
    return render_conf(values)


class FilterModule:
    def filters(self):
        return {"sysctl_conf": sysctl_conf}
