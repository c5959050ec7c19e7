"""VM nodes under QEMU (TCG software emulation) for kernel-level checks.

A container node shares the host's kernel, so kernel-global settings (``kernel.*``,
``vm.*``, ``fs.*`` sysctls, module loading) cannot be tested there. A VM node runs Debian's
cloud kernel of its own. ``/dev/kvm`` on this machine is PVM and cannot boot stock
kernels, so qemu runs with ``-accel tcg``.

The disk is built once per recipe (``recipe/vm/build-vm.sh``: debootstrap + cloud kernel,
``mkfs.ext4 -d``; no loop mount) and cached under ``/var/cache/aegis/images``. Each VM
gets a qcow2 overlay on it and a seed disk with its SSH key, pre-generated host keys
(pinned in the VM's known_hosts) and hostname. Networking is qemu's user mode with SSH
forwarded from a free loopback port: nothing changes on the host's network.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .image import CACHE_ROOT, RECIPE_DIR, ImageBuildError, _locked, apt_mirror
from .naming import LabInputError, check_node_name, check_prefix
from .network import free_port
from .paths import Paths

VM_RECIPE = RECIPE_DIR / "vm" / "build-vm.sh"
PACKAGES = RECIPE_DIR / "packages.txt"
APT_UPDATES = RECIPE_DIR / "apt-updates.sh"  # sourced by the VM build too


@dataclass(frozen=True)
class VmImage:
    dir: Path
    digest: str

    @property
    def disk(self) -> Path:
        return self.dir / "disk.raw"


def vm_recipe_hash(mirror: str) -> str:
    h = hashlib.sha256()
    for path in (VM_RECIPE, PACKAGES, APT_UPDATES):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    h.update(mirror.encode())
    return h.hexdigest()[:12]


def ensure_vm_image(progress=print) -> VmImage:
    mirror = apt_mirror()
    digest = vm_recipe_hash(mirror)
    images = CACHE_ROOT / "images"
    out = images / f"aegis-vm-{digest}"
    with _locked(images / ".vm.lock"):
        if not (out / "disk.raw").exists():
            for tool in ("debootstrap", "mkfs.ext4", "qemu-img"):
                if shutil.which(tool) is None:
                    raise ImageBuildError(f"{tool} is not installed; run scripts/bootstrap.sh")
            work = CACHE_ROOT / "build" / f"vm-{digest}"
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            progress(f"building VM image {digest} from {mirror} (a minute or two)")
            started = time.monotonic()
            try:
                proc = subprocess.run([str(VM_RECIPE), str(work), mirror, str(PACKAGES), str(out)],
                                      capture_output=True, text=True, check=False)
                if proc.returncode != 0:
                    tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
                    raise ImageBuildError(
                        f"VM image build failed (exit {proc.returncode}):\n{tail}")
            finally:
                shutil.rmtree(work, ignore_errors=True)
            for old in images.glob("aegis-vm-*"):
                if old != out:
                    shutil.rmtree(old, ignore_errors=True)
            progress(f"VM image built in {time.monotonic() - started:.0f} s")
    return VmImage(out, digest)


class VmNode:
    """One VM node: ``aegis-<prefix>-<name>``, state under ``.state/vms/<prefix>-<name>``."""

    def __init__(self, prefix: str, name: str, paths: Paths, *, memory_mb: int = 1024,
                 cpus: int = 2) -> None:
        self.prefix = check_prefix(prefix)
        self.name = check_node_name(name)
        self.paths = paths
        self.dir = paths.vms / f"{self.prefix}-{self.name}"
        self.memory_mb = memory_mb
        self.cpus = cpus

    # paths
    ssh_key = property(lambda self: self.dir / "id_ed25519")
    known_hosts = property(lambda self: self.dir / "known_hosts")
    inventory_file = property(lambda self: self.dir / "inventory.yml")
    console = property(lambda self: self.dir / "console.log")
    pidfile = property(lambda self: self.dir / "qemu.pid")
    info_file = property(lambda self: self.dir / "vm.json")

    def qemu_command(self, image: VmImage, port: int) -> list[str]:
        kernel_args = "root=/dev/vda rw console=ttyS0 quiet systemd.show_status=0 net.ifnames=0"
        return [
            "qemu-system-x86_64", "-name", f"aegis-{self.prefix}-{self.name}",
            "-machine", "q35", "-accel", "tcg,thread=multi", "-cpu", "max",
            "-smp", str(self.cpus), "-m", str(self.memory_mb),
            "-display", "none", "-monitor", "none", "-serial", f"file:{self.console}",
            "-kernel", str(image.dir / "vmlinuz"), "-initrd", str(image.dir / "initrd.img"),
            "-append", kernel_args,
            "-drive", f"file={self.dir / 'overlay.qcow2'},if=virtio,format=qcow2",
            "-drive", f"file={self.dir / 'seed.img'},if=virtio,format=raw,readonly=on",
            "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:22",
            "-device", "virtio-net-pci,netdev=n0",
            "-pidfile", str(self.pidfile), "-daemonize",
        ]

    def _seed(self) -> None:
        seed = self.dir / "seed"
        seed.mkdir(mode=0o700)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C",
                        f"aegis-vm-{self.prefix}-{self.name}", "-f", str(self.ssh_key)], check=True)
        shutil.copy(f"{self.ssh_key}.pub", seed / "authorized_keys")
        for kind, bits in (("ed25519", []), ("rsa", ["-b", "3072"])):
            subprocess.run(["ssh-keygen", "-q", "-t", kind, *bits, "-N", "", "-C", "",
                            "-f", str(seed / f"ssh_host_{kind}_key")], check=True)
        (seed / "hostname").write_text(self.name + "\n")
        subprocess.run(["mkfs.ext4", "-q", "-L", "aegisseed", "-d", str(seed),
                        str(self.dir / "seed.img"), "8M"], check=True, capture_output=True)

    def up(self, timeout: float = 240, progress=print) -> dict:
        if self.info_file.exists():
            raise LabInputError(f"VM {self.name} of {self.prefix} exists already; "
                                f"remove it with `aegis-lab vm down --prefix {self.prefix} "
                                f"--name {self.name}`")
        image = ensure_vm_image(progress)
        self.dir.mkdir(parents=True, mode=0o700)
        try:
            self._seed()
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw",
                            "-b", str(image.disk), str(self.dir / "overlay.qcow2")],
                           check=True, capture_output=True)
            port = free_port()
            host_key = (self.dir / "seed" / "ssh_host_ed25519_key.pub").read_text().split()[:2]
            self.known_hosts.write_text(f"[127.0.0.1]:{port} {' '.join(host_key)}\n")
            shutil.rmtree(self.dir / "seed")
            started = time.monotonic()
            proc = subprocess.run(self.qemu_command(image, port), capture_output=True, text=True,
                                  check=False)
            if proc.returncode != 0:
                raise LabInputError(f"qemu did not start: {proc.stderr.strip()}")
            self._wait_ssh(port, timeout)
            boot = round(time.monotonic() - started, 1)
            info = {"name": self.name, "prefix": self.prefix, "port": port,
                    "ssh_private_key": str(self.ssh_key), "known_hosts": str(self.known_hosts),
                    "inventory": str(self.inventory_file), "boot_to_ssh_s": boot,
                    "image": image.digest}
            self._write_inventory(port)
            self.info_file.write_text(json.dumps(info, indent=2))
            return info
        except BaseException:
            self.down()
            raise

    def _ssh_args(self, port: int) -> list[str]:
        return ["-p", str(port), "-i", str(self.ssh_key), "-o", "IdentitiesOnly=yes",
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes",
                "-o", "ConnectTimeout=5", "-o", "BatchMode=yes"]

    def _wait_ssh(self, port: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._qemu_alive():
                break
            with contextlib.suppress(OSError), \
                    socket.create_connection(("127.0.0.1", port), 2) as sock:
                sock.settimeout(3)
                if sock.recv(64).startswith(b"SSH-2.0"):
                    ok = subprocess.run(["ssh", *self._ssh_args(port), "root@127.0.0.1", "true"],
                                        capture_output=True, check=False, timeout=30)
                    if ok.returncode == 0:
                        return
            time.sleep(1)
        tail = "\n".join(self.console.read_text(errors="replace").splitlines()[-20:]) \
            if self.console.exists() else "(no console output)"
        raise LabInputError(f"VM {self.name} did not answer SSH within {timeout:.0f} s; "
                            f"serial console tail:\n{tail}")

    def _write_inventory(self, port: int) -> None:
        args = (f"-o UserKnownHostsFile={self.known_hosts} -o StrictHostKeyChecking=yes "
                "-o IdentitiesOnly=yes")
        doc = {"all": {"hosts": {self.name: {
            "ansible_host": "127.0.0.1", "ansible_port": port, "ansible_user": "root",
            "ansible_ssh_private_key_file": str(self.ssh_key),
            "ansible_ssh_common_args": args, "ansible_python_interpreter": "/usr/bin/python3",
        }}}}
        self.inventory_file.write_text(json.dumps(doc, indent=2))

    def _pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None

    def _qemu_alive(self) -> bool:
        pid = self._pid()
        if pid is None:
            return True  # still starting: -daemonize writes the pidfile
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
        return f"aegis-{self.prefix}-{self.name}".encode() in cmdline

    def down(self) -> None:
        pid = self._pid()
        if pid is not None and self._qemu_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            for _ in range(50):
                if not self._qemu_alive():
                    break
                time.sleep(0.1)
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.dir, ignore_errors=True)

    def show(self) -> dict:
        if not self.info_file.exists():
            raise LabInputError(f"no VM {self.name} in {self.prefix}; create it with "
                                f"`aegis-lab vm up --prefix {self.prefix} --name {self.name}`")
        return json.loads(self.info_file.read_text())
