"""Running Ansible against a lab fleet or VM node: the project's collections and settings,
through the controller's ansible-runner wrapper (``aegis_controller.playbook``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from aegis_controller.playbook import Ansible, EventHandler, PlayResult

from .paths import Paths
from .podman import podman_env


class Target(Protocol):
    """What Ansible runs against: a :class:`~aegis_lab.fleet.LocalFleet` or a
    :class:`~aegis_lab.vm.VmNode` (the checkout's paths and an inventory file)."""

    @property
    def paths(self) -> Paths: ...

    @property
    def inventory_file(self) -> Path: ...


def ansible_env(paths: Paths, fleet: Target | None = None) -> dict[str, str]:
    """Environment for ansible/ansible-playbook/molecule: source tree first on the
    collections path (the ``ansible`` package's collections come after it from the
    virtualenv), the project's ansible.cfg, and podman settings for the break-glass
    ``containers.podman.podman`` connection."""
    env = podman_env()
    env["ANSIBLE_CONFIG"] = str(paths.ansible_cfg)
    env["ANSIBLE_COLLECTIONS_PATH"] = str(paths.collections)
    env["AEGIS_STATE_DIR"] = str(paths.state_root)
    # Ansible's own home (control sockets, temp files, and the collection copies that
    # Molecule and ansible-lint install) stays in the project, never in ~/.ansible.
    env["ANSIBLE_HOME"] = str(paths.ansible_home)
    env["ANSIBLE_REMOTE_TMP"] = "~/.ansible/tmp"  # on the nodes, not derived from ANSIBLE_HOME
    env.setdefault("AEGIS_MOLECULE_PREFIX", "aegismol")
    # what the aegis.fleet.agent role ships to the nodes (built by `aegis-lab wheels`
    # and `make -C bpf`)
    env.setdefault("AEGIS_AGENT_WHEELHOUSE", str(paths.wheelhouse))
    env.setdefault("AEGIS_BPF_DIR", str(paths.bpf_build))
    env.update({"TF_CLI_CONFIG_FILE": str(paths.terraform_cli_config),
                "CHECKPOINT_DISABLE": "1", "TF_IN_AUTOMATION": "1"})
    env["PATH"] = f"{paths.bin_dir}{os.pathsep}{env.get('PATH', '')}"
    if fleet is not None:
        env["ANSIBLE_INVENTORY"] = str(fleet.inventory_file)
    return env


def fleet_ansible(fleet: Target) -> Ansible:
    """An ansible-runner driver for the fleet (runs kept under the state dir)."""
    return Ansible(fleet.paths.runs, env=ansible_env(fleet.paths, fleet))


def ansible_results(fleet: Target, pattern: str, module: str, module_args: str = "",
                    timeout: float = 600, inventory: Path | None = None) -> dict[str, dict]:
    """Run one module ad hoc and return ``{host: result}`` from the runner's events, so
    callers read structured results instead of screen output."""
    result = fleet_ansible(fleet).module(pattern, module, module_args, inventory=inventory,
                                         timeout=timeout)
    if not result.results and not result.ok:
        raise RuntimeError(f"ansible {pattern} -m {module} gave no results ({result.status}, "
                           f"rc {result.rc}); see {result.artifact_dir}/stdout")
    return result.per_host()


def ansible_playbook(fleet: Target, playbook: Path, *, extra_files: tuple[Path, ...] = (),
                     extravars: dict | None = None, tags: str | None = None,
                     on_event: EventHandler | None = None, timeout: float = 1800,
                     check: bool = False) -> PlayResult:
    """Run a playbook on the fleet; ``check`` raises on the first failed task."""
    return fleet_ansible(fleet).run(playbook, extra_files=extra_files, extravars=extravars,
                                    tags=tags, on_event=on_event, timeout=timeout,
                                    check=check)
