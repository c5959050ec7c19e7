"""What root in a lab node may do to the host: a node created without a capability level
has no SYS_ADMIN, BPF or PERFMON in its bounding set and cannot mount tracefs (the
host kernel's tracer) or load a BPF program; ``admin`` and ``agent`` add exactly what
they name. Real nodes (podman + systemd) on a real bridge made by the lab."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from aegis_lab import network, node
from aegis_lab.image import ensure_image
from aegis_lab.naming import LabInputError, node_addressing, pick_network
from aegis_lab.podman import podman
from conftest import sub_prefix

pytestmark = pytest.mark.integration

CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 21, 38, 39
HOST_TRACING = {"CAP_SYS_ADMIN": CAP_SYS_ADMIN, "CAP_PERFMON": CAP_PERFMON,
                "CAP_BPF": CAP_BPF}
# BPF_PROG_LOAD of a two-instruction socket filter (r0 = 0; exit) through ctypes: exit 0
# if the kernel took it, else the errno
BPF_LOAD = r"""
import ctypes, os, struct, sys
insns = struct.pack("<BBhi", 0xb7, 0, 0, 0) + struct.pack("<BBhi", 0x95, 0, 0, 0)
buf = ctypes.create_string_buffer(insns); lic = ctypes.create_string_buffer(b"GPL")
attr = struct.pack("<IIQQ", 1, 2, ctypes.addressof(buf), ctypes.addressof(lic)).ljust(128, b"\0")
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.syscall(321, 5, ctypes.create_string_buffer(attr), len(attr))
sys.exit(0 if fd >= 0 else ctypes.get_errno())
"""


@pytest.fixture(scope="module")
def lab_bridge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    prefix = sub_prefix()
    net = pick_network(prefix)
    keys = tmp_path_factory.mktemp("keys")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / "id")],
                   check=True)
    made: list[node.NodeSpec] = []
    try:
        network.bridge_up(prefix, net)
        yield {"prefix": prefix, "net": net, "image": ensure_image().ref, "keys": keys,
               "made": made}
    finally:
        for spec in made:
            node.destroy(spec)
        network.bridge_down(prefix)


def _node(lab: dict, slot: int, **caps: str) -> node.NodeSpec:
    addressing = node_addressing(lab["net"], slot)
    spec = node.NodeSpec(prefix=lab["prefix"], name=f"n{slot}", slot=slot,
                         network=lab["net"].cidr, image=lab["image"],
                         ssh_public_key_file=str(lab["keys"] / "id.pub"),
                         known_hosts_file=str(lab["keys"] / "known_hosts"),
                         address=str(addressing["address"]), mac=str(addressing["mac"]),
                         **caps)
    lab["made"].append(spec)
    node.create(spec)
    return spec


def _bounding(spec: node.NodeSpec) -> int:
    status = podman("exec", spec.container, "cat", "/proc/1/status").stdout
    return int(next(ln.split()[1] for ln in status.splitlines()
                    if ln.startswith("CapBnd:")), 16)


def _sh(spec: node.NodeSpec, script: str) -> subprocess.CompletedProcess:
    return podman("exec", spec.container, "sh", "-c", script, check=False)


def _tracefs(spec: node.NodeSpec) -> subprocess.CompletedProcess:
    return _sh(spec, "mkdir -p /run/t && mount -t tracefs nodev /run/t && ls /run/t")


def test_a_node_without_a_capability_level_cannot_trace_the_host(lab_bridge: dict) -> None:
    spec = _node(lab_bridge, 0)
    bounding = _bounding(spec)
    held = [name for name, bit in HOST_TRACING.items() if bounding >> bit & 1]
    assert held == [], f"a default lab node holds {held} in the host's user namespace"
    traced = _tracefs(spec)
    assert traced.returncode != 0 and "available_events" not in traced.stdout, traced.stdout
    loaded = podman("exec", spec.container, "python3", "-c", BPF_LOAD, check=False)
    assert loaded.returncode != 0, "a default lab node loaded a BPF program"
    # still a working node: systemd up, and its own network is its to configure
    assert _sh(spec, "systemctl is-system-running --wait").stdout.strip() == "running"
    assert _sh(spec, "nft add table inet t && nft list tables").stdout.strip() == \
        "table inet t"


@pytest.mark.parametrize(("caps", "holds"), [
    ("admin", {"CAP_SYS_ADMIN"}),
    ("agent", {"CAP_SYS_ADMIN", "CAP_BPF", "CAP_PERFMON"}),
])
def test_a_capability_level_adds_exactly_what_it_names(lab_bridge: dict, caps: str,
                                                      holds: set[str]) -> None:
    spec = _node(lab_bridge, 1 if caps == "admin" else 2, caps=caps)
    bounding = _bounding(spec)
    assert {name for name, bit in HOST_TRACING.items() if bounding >> bit & 1} == holds
    # what admin is for: the harden role's tmpfs mounts, nft_ruleset's scratch netns
    assert _sh(spec, "mount -t tmpfs -o nodev,nosuid,noexec tmpfs /mnt").returncode == 0
    assert _sh(spec, "unshare --net true").returncode == 0
    if caps == "agent":  # what agent is for: the agent loads BPF programs
        loaded = podman("exec", spec.container, "python3", "-c", BPF_LOAD, check=False)
        assert loaded.returncode == 0, loaded.returncode


def test_an_unknown_capability_level_is_refused_before_anything_is_made() -> None:
    with pytest.raises(LabInputError, match="base, admin, agent"):
        node.NodeSpec(prefix="ab", name="n1", slot=0, network="10.213.7.0/24", image="x",
                      ssh_public_key_file="k", known_hosts_file="h", address="10.213.7.10",
                      mac="02:ae:0a:d5:07:0a", caps="all")


