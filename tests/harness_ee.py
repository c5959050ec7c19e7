"""Runs inside the locally built execution environment (EE), the way AWX runs a job
template: the EE built once per session (fixture ``execution_environment`` in conftest.py),
a :class:`Container` whose containers are removed at the end, and a lab fleet as the EE
sees it (inventory, SSH key and known_hosts at the container's paths)."""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from aegis_controller.playbook import Container
from aegis_lab.ee import EEImage, ensure_ee
from aegis_lab.fleet import LocalFleet
from aegis_lab.podman import containers_with_label, podman
from harness import PATHS

#: where a fleet's files are mounted (read-only) inside the EE
FLEET_MOUNT = "/aegis-fleet"


def say(msg: str) -> None:
    print(f"ee: {msg}", file=sys.stderr, flush=True)


def build_ee(progress: Callable[[str], None] = say) -> EEImage:
    """The EE of this checkout, built or reused, its build's lines shown as they come."""
    img = ensure_ee(PATHS, progress=progress)
    progress(f"{img.ref} {'built' if img.built else 'reused'} in {img.seconds:.1f} s "
        f"(base {'built' if img.base_built else 'cached'})")
    return img


@contextlib.contextmanager
def ee_container(image: EEImage, prefix: str, *options: str) -> Iterator[Container]:
    """The EE as a :class:`Container` labelled with ``prefix``; every container of it is
    removed at the end, even on failure."""
    container = Container(image=image.ref, options=(*options, f"--label=aegis.prefix={prefix}"),
                          ident_prefix=f"{prefix}-")
    try:
        yield container
    finally:
        for c in containers_with_label(f"aegis.prefix={prefix}"):
            podman("rm", "-f", "--ignore", "-t", "0", c["Id"], check=False)


@dataclass(frozen=True)
class FleetInEE:
    """A fleet as the EE sees it: ``inventory`` (on this host; the runner copies it into
    the run) and the ``options`` that mount what it points at."""

    inventory: Path
    options: tuple[str, ...]


@contextlib.contextmanager
def fleet_in_ee(fleet: LocalFleet, where: Path) -> Iterator[FleetInEE]:
    """The fleet's ``aegis.fleet.fleet`` inventory source for a run inside the EE.

    The lab's source points at this host's Terraform state, whose fleet output names this
    host's key and known_hosts files: here the fleet output is written with the paths the
    container sees, and the key and known_hosts are copied beside it, readable by the
    EE's user (uid 1000, group root; the fleet's own key is root's, mode 0600), the
    directory mounted read-only. The copy of the key is removed at the end."""
    mount = where / "fleet"
    ssh = mount / "ssh"
    ssh.mkdir(parents=True)
    # set, not asked of mkdir: this process's umask may be 077 (the controller's CLI sets it)
    for directory in (mount, ssh):
        directory.chmod(0o750)
    try:
        for src, name in ((fleet.ssh_key, "id_ed25519"), (fleet.known_hosts, "known_hosts")):
            shutil.copyfile(src, ssh / name)
            (ssh / name).chmod(0o640)
        output = dict(fleet.info(), ssh_private_key=f"{FLEET_MOUNT}/ssh/id_ed25519",
                      known_hosts=f"{FLEET_MOUNT}/ssh/known_hosts")
        (mount / "outputs.json").write_text(json.dumps({"fleet": {"value": output}}))
        (mount / "outputs.json").chmod(0o640)
        inventory = where / f"{fleet.prefix}.aegis_fleet.yml"
        inventory.write_text("plugin: aegis.fleet.fleet\n"
                             f"outputs_file: {FLEET_MOUNT}/outputs.json\n")
        yield FleetInEE(inventory, (f"--volume={mount}:{FLEET_MOUNT}:ro",))
    finally:
        shutil.rmtree(mount, ignore_errors=True)
