"""What the node runs, for the heartbeat: OS, kernel, installed packages (dpkg), services
(systemd) and listening sockets (the agent's network namespace, from /proc/net).

Each part degrades to empty when its source is missing (no dpkg, no systemd running),
never to an error: the heartbeat still goes out.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from pathlib import Path

from aegis_protocol.enrollment import Inventory, Listening

DPKG_STATUS = Path("/var/lib/dpkg/status")
PROC_NET = Path("/proc/net")
_TCP_LISTEN = "0A"
_UDP_UNCONNECTED = "07"


def os_release(path: Path = Path("/etc/os-release")) -> str:
    try:
        for line in path.read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                value = line.split("=", 1)[1]
                return json.loads(value) if value.startswith('"') else value
    except (OSError, ValueError):
        pass
    return ""


def packages(status: Path = DPKG_STATUS) -> dict[str, str]:
    """Installed packages and versions from dpkg's status file (``Package:arch`` for
    non-native architectures, as dpkg-query shows them)."""
    try:
        text = status.read_text(errors="replace")
    except OSError:
        return {}
    found: dict[str, str] = {}
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line and not line[0].isspace() and ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if fields.get("Status", "").endswith(" installed") and "Package" in fields:
            name = fields["Package"]
            arch = fields.get("Architecture", "all")
            if arch not in ("all", _native_arch()) and arch:
                name = f"{name}:{arch}"
            found[name] = fields.get("Version", "")
    return found


def _native_arch() -> str:
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)


def services() -> dict[str, str]:
    """Service units systemd knows: ``unit -> active/sub`` (empty without systemd)."""
    try:
        out = subprocess.run(
            ["systemctl", "list-units", "--type=service", "--all", "--plain", "--no-legend",
             "--no-pager"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return {}
    if out.returncode != 0:
        return {}
    found = {}
    for line in out.stdout.splitlines():
        cols = line.split(None, 4)
        if len(cols) >= 4 and cols[0].endswith(".service"):
            found[cols[0]] = f"{cols[2]}/{cols[3]}"[:64]
    return found


def _address(hexaddr: str) -> str:
    raw = bytes.fromhex(hexaddr)
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw[::-1]))
    # /proc/net/*6 prints the address as four host-order (little-endian) 32-bit words
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
    return str(ipaddress.IPv6Address(words))


def listening(proc_net: Path = PROC_NET) -> list[Listening]:
    """TCP sockets in LISTEN and unconnected UDP sockets of this network namespace."""
    found: set[Listening] = set()
    for name, proto, state in (("tcp", "tcp", _TCP_LISTEN), ("tcp6", "tcp", _TCP_LISTEN),
                               ("udp", "udp", _UDP_UNCONNECTED),
                               ("udp6", "udp", _UDP_UNCONNECTED)):
        try:
            lines = (proc_net / name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) < 8 or cols[3] != state:
                continue
            addr, _, port = cols[1].partition(":")
            found.add(Listening(proto=proto, address=_address(addr), port=int(port, 16),
                                uid=int(cols[7])))
    return sorted(found, key=lambda s: (s.proto, s.port, s.address))


def collect() -> Inventory:
    return Inventory(os=os_release(), kernel=os.uname().release, packages=packages(),
                     services=services(), listening=listening())
