"""Finding and removing what a lab run left on the host, by its prefix.

Above both ``fleet`` and ``controller``: taking a fleet down stops its lab controller,
destroys its Terraform resources, then sweeps containers and links of the prefix.
"""

from __future__ import annotations

import os
from pathlib import Path

from pyroute2 import netns

from aegis_agent.bpf.bpffs import BPFFS

from . import controller as lab_controller
from . import network
from .fleet import LocalFleet
from .naming import check_prefix
from .paths import Paths
from .podman import containers_with_label, podman
from .vm import VmNode


def leftovers(prefix: str) -> list[str]:
    """Everything on the host that still carries the prefix (empty after a clean down)."""
    check_prefix(prefix)
    found = [f"container {c['Names'][0]}" for c in containers_with_label(f"aegis.prefix={prefix}")]
    found += [f"link {name}" for name in network.links_with_prefix(prefix)]
    found += [f"netns {name}" for name in sorted(netns.listnetns()) if name.startswith(prefix)]
    mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    found += [f"mount {ln.split()[4]}" for ln in mounts if f"/{prefix}" in ln.split()[4]]
    if BPFFS.is_dir():
        found += [f"bpf pin {p}" for p in BPFFS.glob(f"{prefix}*")]
    for cg_root in (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup")):
        if (cg_root / "cgroup.procs").is_file():
            found += [f"cgroup {p}" for p in cg_root.glob(f"{prefix}*")]
    found += [f"process {pid}" for pid in _processes_with(prefix)]
    return found


def _processes_with(prefix: str) -> list[int]:
    me = os.getpid()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if any(f"aegis-{prefix}" in s or f"/{prefix}-" in s for s in (cmdline, cwd)):
            pids.append(int(entry.name))
    return pids


def sweep(fleet: LocalFleet) -> None:
    """Remove whatever of the fleet's prefix is left (its lab controller, containers,
    links, VM nodes), e.g. after a crash or a failed destroy."""
    lab_controller.down(fleet)
    for c in containers_with_label(f"aegis.prefix={fleet.prefix}"):
        podman("rm", "-f", "--ignore", "-t", "0", c["Id"], check=False)
    network.bridge_down(fleet.prefix)
    for vm in vm_nodes(fleet.paths, fleet.prefix):
        vm.down()


def vm_nodes(paths: Paths, prefix: str) -> list[VmNode]:
    """The VM nodes with state under ``.state/vms/<vm prefix>-<name>`` whose prefix is
    ``prefix`` or starts with it (a test run's sub-prefixes, e.g. a Molecule scenario's)."""
    if not paths.vms.is_dir():
        return []
    found = []
    for d in sorted(paths.vms.glob(f"{prefix}*-*")):
        vm_prefix, name = d.name.split("-", 1)
        if d.is_dir() and vm_prefix.startswith(prefix):
            found.append(VmNode(vm_prefix, name, paths))
    return found


def down(fleet: LocalFleet, timeout: float | None = 600) -> None:
    """Destroy the fleet and everything it made on the host, then its state."""
    fleet.destroy(timeout=timeout)
    sweep(fleet)
    fleet.forget()
