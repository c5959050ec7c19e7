"""The local lab fleet, driven through Terraform (``terraform/fleets/local``).

Each fleet has its own state directory (``.state/fleets/<prefix>/``): Terraform state and
data dir, the fleet's SSH key pair, its known_hosts with pinned host keys, and an
inventory source for the ``aegis.fleet.fleet`` plugin. Several fleets share the module
directory without sharing anything else.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from aegis_controller.terraform import Terraform, TerraformEvent

from .bake import BAKED_REPO, bake_image
from .image import ensure_image
from .naming import (
    DEFAULT_CAPS,
    FleetNetwork,
    LabInputError,
    check_caps,
    check_node_names,
    check_prefix,
    node_addressing,
    node_names,
    pick_network,
)
from .paths import Paths
from .podman import podman_env

log = logging.getLogger("aegis.lab.fleet")


def lab_cli(paths: Paths) -> str:
    found = paths.bin_dir / "aegis-lab"
    if found.exists():
        return str(found)
    which = shutil.which("aegis-lab")
    if not which:
        raise LabInputError("aegis-lab is not installed; run scripts/bootstrap.sh first")
    return which


@dataclass
class Timings:
    """Wall-clock seconds of each fleet step, in the order they ran."""

    steps: dict[str, float] = field(default_factory=dict)

    def record(self, step: str, seconds: float) -> None:
        self.steps[step] = round(seconds, 2)


class LocalFleet:
    """A fleet of lab nodes with one prefix."""

    def __init__(self, prefix: str, paths: Paths, *,
                 on_event: Callable[[TerraformEvent], None] | None = None) -> None:
        self.prefix = check_prefix(prefix)
        self.paths = paths
        self.dir = paths.fleets / self.prefix
        self.on_event = on_event or _log_event
        self.timings = Timings()
        self.tf = Terraform(
            paths.fleet_module,
            data_dir=self.dir / "terraform.d",
            state_path=self.dir / "terraform.tfstate",
            cli_config_file=paths.terraform_cli_config,
            env=podman_env(),
        )

    # -- paths --------------------------------------------------------------------
    @property
    def ssh_key(self) -> Path:
        return self.dir / "ssh" / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.dir / "ssh" / "known_hosts"

    @property
    def inventory_file(self) -> Path:
        return self.dir / "inventory.aegis_fleet.yml"

    @property
    def break_glass_inventory(self) -> Path:
        """The same hosts reached through ``podman exec``, not the node's network."""
        return self.dir / "break-glass.aegis_fleet.yml"

    @property
    def state_file(self) -> Path:
        return self.dir / "terraform.tfstate"

    @property
    def vars_file(self) -> Path:
        return self.dir / "fleet.json"

    # -- lifecycle ------------------------------------------------------------------
    def _prepare(self) -> None:
        (self.dir / "ssh").mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self.ssh_key.exists():
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"aegis-lab-{self.prefix}",
                 "-f", str(self.ssh_key)], check=True,
            )
        self.known_hosts.touch(mode=0o600)
        self.inventory_file.write_text(
            "# Written by aegis-lab: the fleet as Terraform last applied it.\n"
            "plugin: aegis.fleet.fleet\n"
            f"state_file: {self.state_file}\n"
        )
        self.break_glass_inventory.write_text(
            "# Written by aegis-lab: break-glass access through podman exec.\n"
            "plugin: aegis.fleet.fleet\n"
            f"state_file: {self.state_file}\n"
            "connection: podman\n"
        )

    def _variables(self, slots: dict[str, int], image: str, net: str,
                   caps: str) -> dict[str, object]:
        network = FleetNetwork(net)
        return {
            "lab_cli": lab_cli(self.paths),
            "prefix": self.prefix,
            "nodes": {name: node_addressing(network, slot) for name, slot in slots.items()},
            "network": net,
            "image": image,
            "caps": caps,
            "ssh_public_key_file": str(self.ssh_key) + ".pub",
            "ssh_private_key_file": str(self.ssh_key),
            "known_hosts_file": str(self.known_hosts),
        }

    def _timed(self, step: str, fn: Callable[[], object]) -> object:
        started = time.monotonic()
        try:
            return fn()
        finally:
            self.timings.record(step, time.monotonic() - started)

    def up(self, size: int | None = None, names: Sequence[str] | None = None,
           timeout: float | None = 900, caps: str | None = None,
           baked: bool | None = None, without: Sequence[str] = ()) -> dict:
        """Create (or converge) the fleet; return the ``fleet`` output.

        ``caps`` is the nodes' capability level (``aegis_lab.node.CAPS``): ``base``
        unless what runs on the nodes needs more (``admin``: roles that mount or use a
        scratch netns; ``agent``: the agent under test); a fleet keeps the level it was
        created with unless another is given (and then its nodes are re-created).

        ``baked`` boots the nodes from the baked golden image (:mod:`aegis_lab.bake`,
        baked first if its tag does not exist) instead of the plain node image; like
        ``caps``, a fleet keeps its choice unless another is given, and a node whose image
        changes is re-created. ``without`` boots the plain node image built without those
        packages (:func:`aegis_lab.image.ensure_image`): a bare node to measure "before".

        Input is checked before anything is created: a bad size, node name or level
        raises LabInputError naming the fix.
        """
        if baked and without:
            raise LabInputError("a fleet boots from the baked image or from a bare one "
                                "(without packages), not both")
        wanted = check_node_names(list(names)) if names else node_names(size or 0)
        if caps is not None:
            check_caps(caps)
        self.dir.mkdir(parents=True, exist_ok=True)
        saved = json.loads(self.vars_file.read_text()) if self.vars_file.exists() else {}
        nodes = {n: _slot(v) for n, v in saved.get("nodes", {}).items() if n in wanted}
        free = iter(s for s in range(32) if s not in nodes.values())
        for name in wanted:
            nodes.setdefault(name, next(free))
        net = saved.get("network") or pick_network(self.prefix).cidr
        if baked is None:
            baked = str(saved.get("image", "")).startswith(BAKED_REPO + ":")
        image = self._timed("image", (lambda: bake_image(self.paths, prefix=self.prefix))
                            if baked else (lambda: ensure_image(without=without)))
        self._prepare()
        caps = caps or saved.get("caps") or DEFAULT_CAPS
        variables = self._variables(nodes, image.ref, net, caps)  # type: ignore[attr-defined]
        self.vars_file.write_text(json.dumps(variables, indent=2))
        self._timed("init", self.tf.init)
        self._timed("create", lambda: self.tf.apply(variables, on_event=self.on_event,
                                                    timeout=timeout))
        return self.info()

    def replace(self, name: str, timeout: float | None = 600) -> dict:
        """Replace one node with a fresh one (new identity, same address)."""
        variables = self._saved_variables()
        if name not in variables["nodes"]:
            raise LabInputError(
                f"node {name!r} is not in fleet {self.prefix} "
                f"(nodes: {', '.join(sorted(variables['nodes']))})"
            )
        self._timed("replace", lambda: self.tf.apply(
            variables, replace=[f'module.node["{name}"].terraform_data.node'],
            on_event=self.on_event, timeout=timeout))
        return self.info()

    def destroy(self, timeout: float | None = 600) -> None:
        """Destroy what Terraform made for the fleet (``cleanup.down`` also sweeps the
        host and removes the fleet's state)."""
        if self.vars_file.exists():
            self.tf.init()
            self._timed("destroy", lambda: self.tf.destroy(
                self._saved_variables(), on_event=self.on_event, timeout=timeout))

    def forget(self) -> None:
        """Remove the fleet's state directory."""
        shutil.rmtree(self.dir, ignore_errors=True)

    def _saved_variables(self) -> dict:
        if not self.vars_file.exists():
            raise LabInputError(
                f"fleet {self.prefix} does not exist (no {self.vars_file}); "
                "create it with `aegis-lab fleet up`"
            )
        return json.loads(self.vars_file.read_text())

    def info(self) -> dict:
        return self.tf.output()["fleet"]  # type: ignore[return-value]


def _log_event(event: TerraformEvent) -> None:
    if event.type in ("apply_complete", "apply_errored", "change_summary", "diagnostic"):
        log.info("terraform %s: %s", event.type, event.message)


def _slot(saved: object) -> int:
    """A node's slot from a saved ``nodes`` entry (``{slot, address, mac}``, or the bare
    slot older fleets saved)."""
    return int(saved["slot"] if isinstance(saved, dict) else saved)  # type: ignore[arg-type]
