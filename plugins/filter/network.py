# Copyright: Aegis contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Address checks the hardening role needs, with the standard library only (no netaddr)."""

from __future__ import annotations

import ipaddress

from ansible.errors import AnsibleFilterError

DOCUMENTATION = r"""
name: covers
short_description: Whether any network in a list contains an address
version_added: 0.1.0
description:
  - Returns true when O(_input) (a list of addresses or CIDR networks) contains O(address).
  - Used to refuse a firewall baseline that would cut the path a play runs over.
options:
  _input:
    description: Addresses or networks, for example C(10.0.0.0/8) or C(192.0.2.7).
    type: list
    elements: str
    required: true
  address:
    description: The address to look for.
    type: str
    required: true
author: Aegis contributors
"""

EXAMPLES = r"""
- name: Is the controller inside the management networks?
  ansible.builtin.debug:
    msg: "{{ ['10.0.0.0/8', '192.0.2.7'] | aegis.fleet.covers('10.1.2.3') }}"
"""

RETURN = r"""
_value:
  description: True when one of the networks contains the address.
  type: bool
"""


def _network(value: str, what: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(str(value).strip(), strict=False)
    except ValueError as exc:
        raise AnsibleFilterError(f"aegis.fleet.covers: {what} {value!r} is not an IP address or "
                                 f"CIDR network ({exc}); write e.g. 10.0.0.0/8 or 192.0.2.7") from None


def covers(networks, address):
    if isinstance(networks, str):
        networks = [networks]
    target = _network(address, "address")
    if target.num_addresses != 1:
        raise AnsibleFilterError(f"aegis.fleet.covers: address {address!r} must be one address, not a network")
    ip = target.network_address
    return any(ip in _network(n, "network") for n in networks if ip.version == _network(n, "network").version)


class FilterModule:
    def filters(self):
        return {"covers": covers}
