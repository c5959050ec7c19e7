# Copyright: Aegis contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The quarantine without the agent: when an attacker has stopped the Aegis agent, the
node is cut off by the project's own nftables table (``inet aegis_quarantine``) that drops
every packet in and out except loopback and the management peers, before any other
table's rules (priority -300: a drop here is final whatever other tables accept).

Peers are ``ADDRESS[/PREFIX] [PROTO[/PORT]]`` as :func:`recovery.normal_peer` writes
them; a port matches either side, as in the agent's filter. The table's comment holds the
peer list, so a second run with the same peers changes nothing."""

from __future__ import annotations

import os
import re

from ansible_collections.aegis.fleet.plugins.module_utils.recovery import normal_peer, ssh_peer

TABLE = "aegis_quarantine"
_COMMENT = re.compile(r'comment "aegis quarantine; peers: ([^"]*)"')


def ssh_source(environ=None):
    """The peer of the SSH connection this module runs over (``ADDRESS tcp/PORT``, the
    node's SSH port), or None when it does not run over SSH or not over IPv4."""
    try:
        found = ssh_peer((environ if environ is not None else os.environ).get("SSH_CONNECTION"))
        return normal_peer("%s tcp/%d" % found) if found else None
    except ValueError:
        return None


def _matches(direction, peer):
    """nft match expressions (one per rule) for ``peer`` in ``direction`` (saddr for
    input, daddr for output)."""
    parts = peer.split()
    addr = "ip %s %s" % (direction, parts[0])
    if len(parts) == 1:
        return [addr]
    proto, _sep, port = parts[1].partition("/")
    if proto == "icmp":
        return ["%s ip protocol icmp" % addr]
    if not port:
        return ["%s meta l4proto %s" % (addr, proto)]
    return ["%s %s dport %s" % (addr, proto, port), "%s %s sport %s" % (addr, proto, port)]


def script(peers):
    """The nft script that (re)creates the table for ``peers`` (sorted, unique)."""
    peers = sorted(set(peers))
    lines = ["table inet %s" % TABLE, "delete table inet %s" % TABLE,
             "table inet %s {" % TABLE,
             '  comment "aegis quarantine; peers: %s"' % ", ".join(peers)]
    for chain, hook, iface, direction in (("input", "input", "iif", "saddr"),
                                          ("output", "output", "oif", "daddr")):
        lines += ["  chain %s {" % chain,
                  "    type filter hook %s priority -300; policy drop;" % hook,
                  '    %s "lo" accept' % iface]
        lines += ["    %s accept" % m for p in peers for m in _matches(direction, p)]
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


class NftQuarantine:
    """The fallback table on this node, through the ``nft`` command."""

    def __init__(self, module):
        self.module = module
        self.nft = module.get_bin_path("nft")

    def peers(self):
        """The peers of the table in place, or None when there is no table."""
        if self.nft is None:
            return None
        rc, out, _err = self.module.run_command([self.nft, "list", "table", "inet", TABLE])
        if rc != 0:
            return None
        m = _COMMENT.search(out)
        return [p.strip() for p in m.group(1).split(",") if p.strip()] if m else []

    def apply(self, peers):
        if self.nft is None:
            self.module.fail_json(
                msg="the agent is not running and nft is not installed: this node cannot be "
                    "contained without one of them; install nftables (aegis.fleet.harden "
                    "does) or start the agent")
        rc, _out, err = self.module.run_command([self.nft, "-f", "-"], data=script(peers),
                                                binary_data=True)
        if rc != 0:
            self.module.fail_json(msg="nft refused the quarantine table: %s" % err.strip())

    def remove(self):
        if self.nft is not None and self.peers() is not None:
            rc, _out, err = self.module.run_command([self.nft, "delete", "table", "inet", TABLE])
            if rc != 0:
                self.module.fail_json(msg="nft could not delete table inet %s: %s"
                                          % (TABLE, err.strip()))
