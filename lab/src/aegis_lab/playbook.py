"""Running Ansible against a lab fleet with the project's collections and settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from .fleet import CLI_CONFIG, REPO_ROOT, LocalFleet, state_root
from .podman import podman_env


def collections_root() -> Path:
    """A collections path whose ``ansible_collections/aegis/fleet`` is this source tree."""
    root = state_root() / "collections"
    link = root / "ansible_collections" / "aegis" / "fleet"
    if not link.is_symlink() or link.resolve() != REPO_ROOT:
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(REPO_ROOT)
    return root


def ansible_env(fleet: LocalFleet | None = None) -> dict[str, str]:
    """Environment for ansible/ansible-playbook/molecule: source tree first on the
    collections path (the ``ansible`` package's collections come after it from the
    virtualenv), the project's ansible.cfg, and podman settings for the break-glass
    ``containers.podman.podman`` connection."""
    env = podman_env()
    env["ANSIBLE_CONFIG"] = str(REPO_ROOT / "ansible.cfg")
    env["ANSIBLE_COLLECTIONS_PATH"] = str(collections_root())
    env["AEGIS_STATE_DIR"] = str(state_root())
    # Ansible's own home (control sockets, temp files, and the collection copies that
    # Molecule and ansible-lint install) stays in the project, never in ~/.ansible.
    env["ANSIBLE_HOME"] = str(state_root() / "ansible-home")
    env["ANSIBLE_REMOTE_TMP"] = "~/.ansible/tmp"  # on the nodes, not derived from ANSIBLE_HOME
    env.setdefault("AEGIS_MOLECULE_PREFIX", "aegismol")
    # what the aegis.fleet.agent role ships to the nodes (built by `aegis-lab wheels`
    # and `make -C bpf`)
    env.setdefault("AEGIS_AGENT_WHEELHOUSE", str(state_root() / "wheels" / "agent"))
    env.setdefault("AEGIS_BPF_DIR", str(REPO_ROOT / "bpf" / "build"))
    env.update({"TF_CLI_CONFIG_FILE": str(CLI_CONFIG), "CHECKPOINT_DISABLE": "1",
                "TF_IN_AUTOMATION": "1"})
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    if fleet is not None:
        env["ANSIBLE_INVENTORY"] = str(fleet.inventory_file)
    return env


def ansible(fleet: LocalFleet, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run an ad-hoc ``ansible`` command against the fleet's inventory."""
    exe = Path(sys.executable).with_name("ansible")
    return subprocess.run([str(exe), *args], env=ansible_env(fleet), capture_output=True,
                          text=True, timeout=timeout, check=False)


def ansible_results(fleet: LocalFleet, pattern: str, module: str, module_args: str = "",
                    timeout: float = 600, inventory: Path | None = None) -> dict[str, dict]:
    """Run one module ad hoc and return ``{host: result}`` (the ``ansible.posix.json``
    callback), so callers read structured results instead of screen output."""
    exe = Path(sys.executable).with_name("ansible")
    env = ansible_env(fleet)
    env.update({"ANSIBLE_LOAD_CALLBACK_PLUGINS": "1",
                "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json"})
    if inventory is not None:
        env["ANSIBLE_INVENTORY"] = str(inventory)
    args = [str(exe), pattern, "-m", module] + (["-a", module_args] if module_args else [])
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)
    try:
        doc = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise RuntimeError(
            f"ansible {pattern} -m {module} printed no JSON (exit {proc.returncode}): "
            f"{proc.stderr.strip()[-2000:]}"
        ) from None
    results: dict[str, dict] = {}
    for play in doc.get("plays", []):
        for task in play.get("tasks", []):
            results.update(task.get("hosts", {}))
    return results


def ansible_playbook(fleet: LocalFleet, playbook: Path, *args: str,
                     timeout: float = 1800) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("ansible-playbook")
    return subprocess.run([str(exe), str(playbook), *args], env=ansible_env(fleet),
                          capture_output=True, text=True, timeout=timeout, check=False)
