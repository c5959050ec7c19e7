"""One lab node: a rootful podman container of the node image with systemd as PID 1.

Created with ``--systemd=always --network none``, never ``--privileged``, never an
unmasked ``/proc/sys``, and with the capabilities of its fleet's ``caps`` level only
(``naming.CAPS``). The node shares the host's kernel and user namespace, so a capability
in the node is one over the host: ``SYS_ADMIN`` there lets root in the node mount
tracefs/debugfs, and with the seccomp rule podman ties to it, load BPF programs and
open perf events, i.e. trace the host. Fleets get it only where what runs there needs
it (see the README's "What a lab node can do to the host"). After start, only
``/proc/sys/net`` is made writable inside the node's mount namespace: the node's
network sysctls are its own netns's, while ``kernel.*``, ``vm.*`` and ``fs.*`` stay
read-only because in a container they are the host's.

The SSH host key is read through podman (out of band, not over the network) and pinned in
the fleet's known_hosts, so Ansible connects with ``StrictHostKeyChecking=yes``.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from . import network
from .naming import (
    CAPS,
    DEFAULT_CAPS,
    FleetNetwork,
    check_caps,
    check_node_name,
    check_prefix,
)
from .podman import PodmanError, container_pid, podman

log = logging.getLogger("aegis.lab.node")

HOSTKEY = "/etc/ssh/ssh_host_ed25519_key.pub"


class NodeError(RuntimeError):
    """A node could not be created, reached or removed."""


@dataclass(frozen=True)
class NodeSpec:
    """What Terraform hands ``aegis-lab node create|destroy``; ``address`` and ``mac``
    were computed by the lab (``naming.node_addressing``) and only forwarded."""

    prefix: str
    name: str
    slot: int
    network: str
    image: str
    ssh_public_key_file: str
    known_hosts_file: str
    address: str
    mac: str
    caps: str = DEFAULT_CAPS

    def __post_init__(self) -> None:
        check_prefix(self.prefix)
        check_node_name(self.name)
        check_caps(self.caps)

    @property
    def container(self) -> str:
        return f"{self.prefix}-{self.name}"

    @property
    def net(self) -> FleetNetwork:
        return FleetNetwork(self.network)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    lock = path.with_name(path.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _set_known_host(known_hosts: Path, address: str, key_line: str | None) -> None:
    """Replace the pinned host key of ``address`` (or drop it when key_line is None)."""
    with _file_lock(known_hosts):
        lines = known_hosts.read_text().splitlines() if known_hosts.exists() else []
        kept = [ln for ln in lines if ln.split(" ", 1)[0] != address]
        if key_line:
            kept.append(f"{address} {key_line}")
        tmp = known_hosts.with_name(known_hosts.name + ".tmp")
        tmp.write_text("".join(f"{ln}\n" for ln in kept))
        tmp.replace(known_hosts)


def _make_proc_sys_net_writable(pid: int) -> None:
    script = "mount --bind /proc/sys/net /proc/sys/net && mount -o remount,bind,rw /proc/sys/net"
    proc = subprocess.run(["nsenter", "-t", str(pid), "-m", "--", "sh", "-c", script],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise NodeError(f"could not make /proc/sys/net writable in the node: {proc.stderr}")


def _apply_net_sysctls(container: str) -> None:
    """Apply the node's own ``net.*`` sysctl.d settings, as systemd-sysctl does at a real
    machine's boot: in a container node it skipped them (``/proc/sys`` is read-only until
    :func:`_make_proc_sys_net_writable`). A node of a hardened (baked) image so boots with
    its baseline; the plain image has none of its own, and kernel-global keys stay the
    host's (never written)."""
    res = podman("exec", container, "/lib/systemd/systemd-sysctl", "--prefix=/net/",
                 check=False, timeout=30)
    if res.returncode != 0:
        log.warning("systemd-sysctl --prefix=/net/ in %s: %s", container,
                    (res.stderr or res.stdout).strip()[-500:])


def _wait_for_ssh(spec: NodeSpec, deadline: float) -> str:
    """Wait until sshd has its host key and answers on port 22; return the key."""
    key = ""
    while time.monotonic() < deadline:
        if not key:
            res = podman("exec", spec.container, "cat", HOSTKEY, check=False, timeout=10)
            if res.returncode == 0 and res.stdout.startswith("ssh-"):
                key = " ".join(res.stdout.split()[:2])
        if key:
            try:
                with socket.create_connection((spec.address, 22), timeout=1) as sock:
                    sock.settimeout(2)
                    if sock.recv(64).startswith(b"SSH-"):
                        return key
            except OSError:
                pass
        time.sleep(0.1)
    state = podman("exec", spec.container, "systemctl", "is-system-running", check=False)
    raise NodeError(
        f"node {spec.name} ({spec.address}) did not offer SSH in time; systemd state: "
        f"{state.stdout.strip() or state.stderr.strip()}. See `podman logs {spec.container}`."
    )


def create(spec: NodeSpec, timeout: float = 90) -> dict:
    """Create and start the node; return its facts once SSH answers. Idempotent: a
    leftover container of the same name (e.g. from an interrupted run) is replaced."""
    started = time.monotonic()
    if not network.link_exists(network.bridge_name(spec.prefix)):
        raise NodeError(
            f"bridge {network.bridge_name(spec.prefix)} does not exist; create the fleet "
            "through Terraform (terraform/fleets/local), which brings the bridge up first"
        )
    podman("rm", "-f", "--ignore", "-t", "0", spec.container)
    podman(
        "create", "--name", spec.container, "--hostname", spec.name,
        "--network", "none", "--systemd", "always", "--cap-add", CAPS[spec.caps],
        "--label", f"aegis.prefix={spec.prefix}", "--label", f"aegis.node={spec.name}",
        "--label", f"aegis.slot={spec.slot}", "--label", f"aegis.caps={spec.caps}",
        spec.image,
    )
    try:
        if not Path(spec.ssh_public_key_file).is_file():
            raise NodeError(f"SSH public key {spec.ssh_public_key_file} not found")
        podman("cp", spec.ssh_public_key_file, f"{spec.container}:/root/.ssh/authorized_keys")
        podman("start", spec.container)
        pid = container_pid(spec.container)
        _make_proc_sys_net_writable(pid)
        _apply_net_sysctls(spec.container)
        network.attach_node(spec.prefix, spec.slot, pid, spec.address, spec.mac, spec.net)
        key = _wait_for_ssh(spec, started + timeout)
    except Exception:
        destroy(spec)
        raise
    _set_known_host(Path(spec.known_hosts_file), spec.address, key)
    facts = {"name": spec.name, "container": spec.container, "address": spec.address,
             "mac": spec.mac, "host_key": key, "seconds": round(time.monotonic() - started, 2)}
    log.info("node ready", extra={"node": facts})
    return facts


def destroy(spec: NodeSpec) -> None:
    """Stop and remove the node (systemd gets SIGRTMIN+3, 5 s to halt), its link and
    its pinned host key. Removing a node that is already gone is not an error."""
    try:
        podman("rm", "-f", "--ignore", "-t", "5", spec.container, timeout=60)
    except PodmanError as exc:
        raise NodeError(f"could not remove node {spec.name}: {exc}") from exc
    network.detach_node(spec.prefix, spec.slot)
    _set_known_host(Path(spec.known_hosts_file), spec.address, None)
