"""Names, addresses and capability levels of the local lab fleet, validated before anything
is created.

Every object the lab creates on the host carries the run's prefix (containers, links,
pins, state directories), so a developer's leftovers never collide with a CI run and a
cleanup can find exactly what one run made.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import re
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path

MAX_NODES = 32
FIRST_HOST = 10  # node slot 0 gets .10 in the fleet's /24, the bridge (gateway) .1

#: The capability levels of a node, each the one before plus what it says:
#: ``base``: the node's own network (addresses, nftables, its net sysctls);
#: ``admin``: + SYS_ADMIN, for Ansible roles that mount (the harden role's /tmp,
#: /var/tmp, /dev/shm), validate rulesets in a scratch netns (``unshare --net``) or
#: sandbox systemd units -- and with it, root in the node can trace the host;
#: ``agent``: + BPF, PERFMON, SYS_PTRACE, the capabilities the agent's own unit keeps
#: (the agent under test; KILL is among podman's defaults).
CAPS = {
    "base": "NET_ADMIN,NET_RAW",
    "admin": "SYS_ADMIN,NET_ADMIN,NET_RAW",
    "agent": "SYS_ADMIN,NET_ADMIN,NET_RAW,BPF,PERFMON,SYS_PTRACE",
}
DEFAULT_CAPS = "base"

_PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{1,7}$")
_NODE_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$|^[a-z]$")


class LabInputError(ValueError):
    """Bad input to the lab: the message says what was wrong and how to fix it."""


def new_prefix() -> str:
    """A fresh per-run prefix such as ``at3f9c``."""
    return "at" + secrets.token_hex(2)


def check_prefix(prefix: str) -> str:
    if not _PREFIX_RE.match(prefix or ""):
        raise LabInputError(
            f"invalid fleet prefix {prefix!r}: use 2-8 characters, a lowercase letter first, "
            "then lowercase letters or digits (it becomes part of Linux interface names, "
            "which are limited to 15 characters), e.g. 'aegis' or 'at3f9c'"
        )
    return prefix


def check_node_name(name: str) -> str:
    if not isinstance(name, str) or not _NODE_RE.match(name):
        raise LabInputError(
            f"invalid node name {name!r}: use 1-32 characters of lowercase letters, digits "
            "and '-', starting with a letter and not ending with '-' (it is used as a "
            "hostname, a container name and a Terraform map key), e.g. 'node1' or 'web-a'"
        )
    return name


def check_caps(caps: str) -> str:
    if caps not in CAPS:
        raise LabInputError(
            f"invalid node capability level {caps!r}: use one of {', '.join(CAPS)} "
            "(base unless a role needs mounts or a scratch netns: admin; the agent "
            "under test: agent)"
        )
    return caps


def check_size(size: object) -> int:
    if isinstance(size, bool) or not isinstance(size, int):
        try:
            size = int(str(size), 10)
        except ValueError:
            raise LabInputError(
                f"invalid fleet size {size!r}: give a whole number of nodes from 1 to {MAX_NODES}"
            ) from None
    if not 1 <= size <= MAX_NODES:
        raise LabInputError(
            f"invalid fleet size {size}: a local fleet has 1 to {MAX_NODES} nodes "
            f"(each is a container with systemd on this machine); pick a size in that range"
        )
    return size


def node_names(size: int) -> list[str]:
    return [f"node{i + 1}" for i in range(check_size(size))]


def check_node_names(names: list[str]) -> list[str]:
    if not names:
        raise LabInputError("no node names given: name at least one node, e.g. 'node1'")
    check_size(len(names))
    seen: set[str] = set()
    for name in names:
        check_node_name(name)
        if name in seen:
            raise LabInputError(f"node name {name!r} is given twice: node names must be unique")
        seen.add(name)
    return names


@dataclass(frozen=True)
class FleetNetwork:
    """A fleet's /24 on its own bridge: gateway .1 on the host, nodes from .10."""

    cidr: str

    def __post_init__(self) -> None:
        try:
            net = ipaddress.IPv4Network(self.cidr, strict=True)
        except ValueError as exc:
            raise LabInputError(
                f"invalid fleet network {self.cidr!r}: {exc}; give an IPv4 /24 such as "
                "'10.213.7.0/24'"
            ) from None
        if net.prefixlen != 24 or not net.is_private:
            raise LabInputError(
                f"invalid fleet network {self.cidr!r}: the lab needs a private IPv4 /24 "
                "(e.g. '10.213.7.0/24') that no other interface on this machine uses"
            )

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.cidr)

    @property
    def gateway(self) -> str:
        return str(self.network.network_address + 1)

    def address(self, slot: int) -> str:
        if not 0 <= slot < MAX_NODES:
            raise LabInputError(f"node slot {slot} out of range 0..{MAX_NODES - 1}")
        return str(self.network.network_address + FIRST_HOST + slot)


def mac_for(address: str) -> str:
    """A fixed, locally administered MAC per address, so a re-created node keeps it."""
    octets = ipaddress.IPv4Address(address).packed
    return "02:ae:" + ":".join(f"{b:02x}" for b in octets)


def node_addressing(net: FleetNetwork, slot: int) -> dict[str, object]:
    """A node's slot, address and MAC: the one place they are computed (Terraform only
    forwards them from the ``nodes`` variable)."""
    address = net.address(slot)
    return {"slot": slot, "address": address, "mac": mac_for(address)}


_RTN_LOCAL, _RTN_BROADCAST = 2, 3  # rtnetlink route types that are not routed networks


def used_ipv4_networks() -> list[ipaddress.IPv4Network]:
    """Networks already routed on this host, in any table (so a new fleet never overlaps
    one)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        routes = ipr.get_routes(family=socket.AF_INET)
    nets = []
    for route in routes:
        dst = route.get("dst")
        if not dst or route["type"] in (_RTN_LOCAL, _RTN_BROADCAST):
            continue
        nets.append(ipaddress.IPv4Network(f"{dst}/{route['dst_len']}", strict=False))
    return nets


#: claims of networks picked but maybe not routed yet, shared by every lab process on this
#: host (tests run fleets from several processes at once): one file per octet
NETWORK_CLAIMS = Path("/run/aegis-lab/networks")
CLAIM_HOLD_S = 600  # a claim blocks its network this long; by then the bridge routes it


def pick_network(prefix: str) -> FleetNetwork:
    """A free 10.213.X.0/24 for this fleet, derived from the prefix and checked unused:
    neither routed on this host nor picked by another fleet in the last minutes (under a
    host-wide lock, so two fleets made at once never get the same one)."""
    explicit = os.environ.get("AEGIS_FLEET_NETWORK")
    if explicit:
        return FleetNetwork(explicit)
    NETWORK_CLAIMS.mkdir(parents=True, exist_ok=True)
    with open(NETWORK_CLAIMS / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        used = used_ipv4_networks()
        start = sum(prefix.encode()) % 250
        now = time.time()
        for i in range(250):
            octet = 1 + (start + i) % 250
            candidate = ipaddress.IPv4Network(f"10.213.{octet}.0/24")
            if any(candidate.overlaps(n) for n in used):
                continue
            claim = NETWORK_CLAIMS / str(octet)
            try:
                held = (claim.read_text().strip() != prefix
                        and now - claim.stat().st_mtime < CLAIM_HOLD_S)
            except OSError:
                held = False
            if held:
                continue
            claim.write_text(prefix + "\n")
            return FleetNetwork(str(candidate))
    raise LabInputError(
        "no free /24 left in 10.213.0.0/16 for a lab fleet; tear down old fleets "
        "(`aegis-lab cleanup --all`) or set AEGIS_FLEET_NETWORK to a free private /24"
    )
