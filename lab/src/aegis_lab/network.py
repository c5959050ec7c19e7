"""The fleet's project-owned bridge and each node's veth link, done with iproute2.

No NAT, no forwarding, no host firewall rule: nodes reach each other over the bridge and
the host through the bridge address; nothing else. Interface names carry the prefix.
"""

from __future__ import annotations

import json
import subprocess

from .naming import FleetNetwork, check_prefix


class NetworkError(RuntimeError):
    """An iproute2 step failed."""


def _ip(*args: str, check: bool = True, netns_pid: int | None = None) -> str:
    cmd = ["ip", *args]
    if netns_pid is not None:
        cmd = ["nsenter", "-t", str(netns_pid), "-n", "--", *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise NetworkError(f"`{' '.join(cmd)}` failed: {proc.stderr.strip()}")
    return proc.stdout


def bridge_name(prefix: str) -> str:
    return f"{check_prefix(prefix)}-br"


def host_veth_name(prefix: str, slot: int) -> str:
    return f"{check_prefix(prefix)}v{slot}"


def link_exists(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", "dev", name], capture_output=True,
                          check=False).returncode == 0


def links_with_prefix(prefix: str) -> list[str]:
    out = _ip("-j", "link", "show")
    return [link["ifname"] for link in json.loads(out or "[]")
            if link["ifname"].startswith(check_prefix(prefix))]


def bridge_up(prefix: str, net: FleetNetwork) -> str:
    """Create (idempotently) the fleet bridge with the gateway address."""
    br = bridge_name(prefix)
    if not link_exists(br):
        _ip("link", "add", br, "type", "bridge", "stp_state", "0")
    _ip("addr", "replace", f"{net.gateway}/24", "dev", br)
    _ip("link", "set", br, "up")
    return br


def bridge_down(prefix: str) -> None:
    """Delete the fleet bridge and any host-side veth of the fleet still present."""
    for name in links_with_prefix(prefix):
        _ip("link", "del", name, check=False)


def attach_node(prefix: str, slot: int, pid: int, address: str, mac: str,
                net: FleetNetwork) -> str:
    """Give the node (by its init PID) an eth0 on the fleet bridge with a fixed MAC."""
    br = bridge_name(prefix)
    host_end = host_veth_name(prefix, slot)
    if link_exists(host_end):
        _ip("link", "del", host_end)
    _ip("link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", str(pid))
    _ip("link", "set", host_end, "master", br, "up")
    _ip("link", "set", "lo", "up", netns_pid=pid)
    _ip("link", "set", "eth0", "address", mac, netns_pid=pid)
    _ip("addr", "add", f"{address}/24", "dev", "eth0", netns_pid=pid)
    _ip("link", "set", "eth0", "up", netns_pid=pid)
    _ip("route", "replace", "default", "via", net.gateway, netns_pid=pid)
    # A re-created node keeps address and MAC; drop whatever the host cached about it.
    _ip("neigh", "flush", "to", address, "dev", br, check=False)
    return host_end


def detach_node(prefix: str, slot: int) -> None:
    host_end = host_veth_name(prefix, slot)
    if link_exists(host_end):
        _ip("link", "del", host_end, check=False)
