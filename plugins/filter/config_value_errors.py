# Copyright: Aegis contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What is wrong with values a role writes verbatim into a daemon's configuration file."""

from __future__ import annotations

import ipaddress
import re

DOCUMENTATION = r"""
name: config_value_errors
short_description: Problems in values that go verbatim into a configuration file
version_added: 0.1.0
description:
  - O(_input) maps variable names to a value or a list of values; returns one message per value that
    is not of O(kind), naming the variable, the value and how to write it; an empty list when all
    are good.
  - Used by C(aegis.fleet.harden) before a play changes anything, for the values it writes into
    fail2ban's C(jail.local) and AIDE's configuration, where a stray space or newline would change
    the meaning of the file.
options:
  _input:
    description: Variable name to its value (a string or number, or a list of them).
    type: dict
    required: true
  kind:
    description:
      - C(network) an IP address or CIDR network; C(duration) a fail2ban time such as C(10m) or
        C(1h30m) (units s, m, h, d, w); C(path) an absolute path or path expression without
        whitespace.
    type: str
    choices: [network, duration, path]
    required: true
author: Aegis contributors
"""

EXAMPLES = r"""
- name: Refuse bad fail2ban values
  ansible.builtin.assert:
    that: "({'harden_fail2ban_ignore': harden_fail2ban_ignore} | aegis.fleet.config_value_errors('network')) == []"
"""

RETURN = r"""
_value:
  description: One message per bad value; empty when every value is good.
  type: list
  elements: str
"""

from ansible.errors import AnsibleFilterError

_DURATION = re.compile(r"^(?:[0-9]+[smhdw]?)+$")
_PATH = re.compile(r"^/\S*$")
_HOW = {
    "network": "an IP address or CIDR network, e.g. 192.0.2.0/24",
    "duration": "a time such as 10m, 1h or 1h30m (units s, m, h, d, w)",
    "path": "an absolute path without whitespace, e.g. /etc",
}


def _good(kind, value):
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return False
    text = str(value)
    if kind == "network":
        try:
            ipaddress.ip_network(text, strict=False)
            return True
        except ValueError:
            return False
    return bool((_DURATION if kind == "duration" else _PATH).match(text))


def config_value_errors(values, kind):
    if kind not in _HOW:
        raise AnsibleFilterError("config_value_errors: kind must be one of %s, not %r" % (", ".join(_HOW), kind))
    if not isinstance(values, dict):
        raise AnsibleFilterError("config_value_errors: input must be a dict of variable name to value")
    errors = []
    for name, value in values.items():
        items = value if isinstance(value, list) else [value]
        for item in items:
            if not _good(kind, item):
                errors.append("%s: %r is not %s" % (name, item, _HOW[kind]))
    return errors


class FilterModule:
    def filters(self):
        return {"config_value_errors": config_value_errors}
