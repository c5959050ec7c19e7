# Copyright: Aegis contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The agent's management peers with the play's SSH source and the controller added, so
the segmentation filter the role configures cannot cut the connection that applies it."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from ansible.errors import AnsibleFilterError

from ansible_collections.aegis.fleet.plugins.module_utils.recovery import ssh_peer

DOCUMENTATION = r"""
name: management_peers
short_description: Management peers with the SSH source and the controller added
version_added: 0.1.0
description:
  - Returns O(_input) (the agent's management peers, C(ADDRESS[/PREFIX] [PROTO/PORT])) with
    C(CLIENT tcp/PORT) for the SSH connection the play runs over and C(ADDRESS tcp/PORT) for
    the controller added, each only when no peer already covers it.
  - The SSH source comes from the node's C(SSH_CONNECTION) (C(client_ip client_port
    server_ip server_port)); a connection that is not SSH (empty) adds nothing.
  - The controller is added when its URL names an IPv4 address; a host name is resolved
    and kept reachable by the agent itself, on the node.
  - IPv6 addresses are not added (the filter's peers are IPv4; IPv6 follows its ipv6 policy).
options:
  _input:
    description: The configured management peers.
    type: list
    elements: str
    required: true
  ssh_connection:
    description: The node's C(SSH_CONNECTION) value, or an empty string.
    type: str
    default: ""
  controller_url:
    description: The controller's https URL, or an empty string.
    type: str
    default: ""
author: Aegis contributors
"""

EXAMPLES = r"""
- name: The peers the agent's config gets
  ansible.builtin.debug:
    msg: >-
      {{ ['10.0.0.0/24 tcp/22'] | aegis.fleet.management_peers(
           ssh_connection='192.0.2.7 50022 192.0.2.2 22',
           controller_url='https://192.0.2.1:8443') }}
  # ['10.0.0.0/24 tcp/22', '192.0.2.7 tcp/22', '192.0.2.1 tcp/8443']
"""

RETURN = r"""
_value:
  description: The peers, the configured ones first, with no duplicate.
  type: list
  elements: str
"""


def _ipv4(text: str) -> ipaddress.IPv4Address | None:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    return ip if isinstance(ip, ipaddress.IPv4Address) else None


def _covered(peers: list[str], ip: ipaddress.IPv4Address, port: int) -> bool:
    for spec in peers:
        parts = str(spec).split()
        try:
            net = ipaddress.ip_network(parts[0], strict=False)
        except (ValueError, IndexError):
            continue
        if ip not in net:
            continue
        proto = parts[1] if len(parts) > 1 else ""
        if proto in ("", "tcp", f"tcp/{port}"):
            return True
    return False


def management_peers(peers, ssh_connection="", controller_url=""):
    if not isinstance(peers, list):
        raise AnsibleFilterError("aegis.fleet.management_peers: the input must be a list of "
                                 f"peers, got {type(peers).__name__}")
    out = [str(p) for p in peers]
    wanted = []
    try:
        ssh = ssh_peer(ssh_connection)
    except ValueError as exc:
        raise AnsibleFilterError(f"aegis.fleet.management_peers: ssh_connection {exc}") from None
    if ssh is not None:
        wanted.append(ssh)
    if controller_url:
        url = urlsplit(str(controller_url))
        try:
            port = url.port or 443
        except ValueError as exc:
            raise AnsibleFilterError(f"aegis.fleet.management_peers: controller_url "
                                     f"{controller_url!r}: {exc}") from None
        if url.hostname:
            wanted.append((url.hostname, port))
    for host, port in wanted:
        ip = _ipv4(host)
        if ip is not None and not _covered(out, ip, port):
            out.append(f"{ip} tcp/{port}")
    return out


class FilterModule:
    def filters(self):
        return {"management_peers": management_peers}
