"""The fleet's project-owned bridge and each node's veth link, done over rtnetlink (pyroute2).

No NAT, no forwarding, no host firewall rule: nodes reach each other over the bridge and
the host through the bridge address; nothing else. Interface names carry the prefix.
"""

from __future__ import annotations

import contextlib
import socket

from pyroute2 import IPRoute, NetlinkError, NetNS

from .naming import FleetNetwork, check_prefix


class NetworkError(RuntimeError):
    """An rtnetlink step failed."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now (loopback by default): for the lab's servers."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def bridge_name(prefix: str) -> str:
    return f"{check_prefix(prefix)}-br"


def host_veth_name(prefix: str, slot: int) -> str:
    return f"{check_prefix(prefix)}v{slot}"


def _index(ipr: IPRoute | NetNS, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def link_exists(name: str) -> bool:
    with IPRoute() as ipr:
        return _index(ipr, name) is not None


def links_with_prefix(prefix: str) -> list[str]:
    check_prefix(prefix)
    with IPRoute() as ipr:
        names = [link.get("ifname") or "" for link in ipr.get_links()]
    return [name for name in names if name.startswith(prefix)]


def _delete(ipr: IPRoute, name: str) -> None:
    index = _index(ipr, name)
    if index is not None:
        try:
            ipr.link("del", index=index)
        except NetlinkError as exc:  # gone meanwhile (a veth goes with its peer)
            if _index(ipr, name) is not None:
                raise NetworkError(f"could not delete link {name}: {exc}") from exc


def bridge_up(prefix: str, net: FleetNetwork) -> str:
    """Create (idempotently) the fleet bridge with the gateway address."""
    br = bridge_name(prefix)
    try:
        with IPRoute() as ipr:
            if _index(ipr, br) is None:
                ipr.link("add", ifname=br, kind="bridge", br_stp_state=0)
            index = _index(ipr, br)
            ipr.addr("replace", index=index, address=net.gateway, prefixlen=24)
            ipr.link("set", index=index, state="up")
    except NetlinkError as exc:
        raise NetworkError(f"could not bring up bridge {br} with {net.gateway}/24: {exc}") \
            from exc
    return br


def bridge_down(prefix: str) -> None:
    """Delete the fleet bridge and any host-side veth of the fleet still present."""
    names = links_with_prefix(prefix)
    with IPRoute() as ipr:
        for name in names:
            with contextlib.suppress(NetworkError):  # keep sweeping the rest
                _delete(ipr, name)


def attach_node(prefix: str, slot: int, pid: int, address: str, mac: str,
                net: FleetNetwork) -> str:
    """Give the node (by its init PID) an eth0 on the fleet bridge with a fixed MAC."""
    br = bridge_name(prefix)
    host_end = host_veth_name(prefix, slot)
    try:
        with IPRoute() as ipr:
            _delete(ipr, host_end)
            ipr.link("add", ifname=host_end, kind="veth",
                     peer={"ifname": "eth0", "net_ns_pid": pid})
            ipr.link("set", index=_index(ipr, host_end), master=_index(ipr, br), state="up")
        with NetNS(f"/proc/{pid}/ns/net") as ns:
            ns.link("set", index=_index(ns, "lo"), state="up")
            eth0 = _index(ns, "eth0")
            ns.link("set", index=eth0, address=mac)
            ns.addr("add", index=eth0, address=address, prefixlen=24)
            ns.link("set", index=eth0, state="up")
            ns.route("replace", dst="default", gateway=net.gateway)
        with IPRoute() as ipr:
            _flush_neighbour(ipr, address, _index(ipr, br))
    except NetlinkError as exc:
        raise NetworkError(f"could not attach node {address} (pid {pid}) to {br}: {exc}") \
            from exc
    return host_end


def _flush_neighbour(ipr: IPRoute, address: str, bridge: int | None) -> None:
    """A re-created node keeps address and MAC: drop whatever the host cached about it."""
    if bridge is None:
        return
    for _ in ipr.get_neighbours(dst=address, ifindex=bridge):
        try:
            ipr.neigh("del", dst=address, ifindex=bridge)
        except NetlinkError:
            break


def detach_node(prefix: str, slot: int) -> None:
    with IPRoute() as ipr:
        _delete(ipr, host_veth_name(prefix, slot))
