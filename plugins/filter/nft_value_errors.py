# Copyright: Aegis contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What is wrong with the values the hardening role writes into its nftables baseline."""

from __future__ import annotations

import ipaddress

DOCUMENTATION = r"""
name: nft_value_errors
short_description: Problems in the inbound services and management networks of an nftables baseline
version_added: 0.1.0
description:
  - Returns one message per bad value in O(_input) (the C(harden_nftables_inbound) list of
    C(port), C(proto), C(sources)) and in O(management) (addresses or networks allowed to reach
    SSH), each naming the value and how to write it; an empty list when all are good.
  - The values go verbatim into an nft script, so anything that is not a port, a protocol or an
    address is refused here, before a play changes anything.
options:
  _input:
    description: Inbound services, each a dict with C(port) (1-65535), C(proto) (tcp or udp) and
      C(sources) (addresses or CIDR networks; empty means any).
    type: list
    elements: raw
    required: true
  management:
    description: Addresses or CIDR networks allowed to reach SSH.
    type: list
    elements: raw
    default: []
author: Aegis contributors
"""

EXAMPLES = r"""
- name: Refuse bad firewall values
  ansible.builtin.assert:
    that: (harden_nftables_inbound | aegis.fleet.nft_value_errors(harden_nftables_management_networks)) == []
"""

RETURN = r"""
_value:
  description: One message per bad value; empty when every value is good.
  type: list
  elements: str
"""

KEYS = ("port", "proto", "sources")
PROTOS = ("tcp", "udp")


def _address_error(value, where):
    if not isinstance(value, str):
        return "%s: %r is not an address or network; write e.g. 10.0.0.0/8 or 192.0.2.7" % (where, value)
    try:
        ipaddress.ip_network(value.strip(), strict=False)  # nft masks host bits itself
        return None
    except ValueError as exc:
        return "%s: %r is not an IP address or CIDR network (%s); write e.g. 10.0.0.0/8 or 192.0.2.7" % (
            where, value, exc)


def _port_error(port, where):
    if isinstance(port, bool) or not isinstance(port, (int, str)) or not str(port).strip().isdigit():
        return "%s.port: %r is not a port number; write a number from 1 to 65535, e.g. port: 443" % (where, port)
    if not 1 <= int(port) <= 65535:
        return "%s.port: %s is out of range; a port is a number from 1 to 65535" % (where, port)
    return None


def _service_errors(svc, where):
    if not isinstance(svc, dict):
        return ["%s: %r is not a service; write {port: 443, proto: tcp, sources: [10.0.0.0/8]}" % (where, svc)]
    errors = []
    unknown = sorted(str(k) for k in svc if k not in KEYS)
    if unknown:
        errors.append("%s: unknown key(s) %s; a service has only port, proto and sources"
                      % (where, ", ".join(unknown)))
    if "port" not in svc:
        errors.append("%s.port: missing; write the destination port, e.g. port: 443" % where)
    else:
        errors.append(_port_error(svc["port"], where))
    proto = svc.get("proto", "tcp")
    if proto not in PROTOS:
        errors.append("%s.proto: %r is not tcp or udp; write proto: tcp or proto: udp" % (where, proto))
    sources = svc.get("sources") or []
    if not isinstance(sources, list):
        errors.append("%s.sources: %r is not a list; write e.g. sources: [10.0.0.0/8]" % (where, sources))
    else:
        errors.extend(_address_error(s, "%s.sources[%d]" % (where, i)) for i, s in enumerate(sources))
    return [e for e in errors if e]


def nft_value_errors(inbound, management=None):
    errors = []
    if not isinstance(inbound, list):
        return ["harden_nftables_inbound: %r is not a list of services; write e.g. "
                "[{port: 443, proto: tcp}]" % (inbound,)]
    for i, svc in enumerate(inbound):
        errors.extend(_service_errors(svc, "harden_nftables_inbound[%d]" % i))
    management = management or []
    if not isinstance(management, list):
        errors.append("harden_nftables_management_networks: %r is not a list; write e.g. "
                      "[10.0.0.0/8]" % (management,))
        return errors
    for i, net in enumerate(management):
        error = _address_error(net, "harden_nftables_management_networks[%d]" % i)
        if error:
            errors.append(error)
    return errors


class FilterModule:
    def filters(self):
        return {"nft_value_errors": nft_value_errors}
