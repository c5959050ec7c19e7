"""Golden node images baked by the same roles that converge the nodes.

``aegis-lab image bake`` starts a build container from the node image (like a node, at
the ``admin`` capability level the hardening role needs, but on no network), runs
``playbooks/bake.yml`` on it through the ``containers.podman.podman`` connection
(``aegis.fleet.harden`` and the install part of ``aegis.fleet.agent``, then every
per-node identity removed), checks the result carries no identity, and commits it as
``localhost/aegis-node-baked:<hash>``. The hash covers what the image is made of: the
node image, the roles, the collection's plugins, bake.yml, the agent's sources and BPF
objects, and the bake variables; an image of that tag is reused as it is. The build
container goes away whatever happens.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from aegis_controller.playbook import Ansible, Progress

from .image import CACHE_ROOT, _locked, ensure_image
from .naming import CAPS, LabInputError, check_prefix
from .node import _make_proc_sys_net_writable
from .paths import Paths
from .podman import container_pid, image_exists, podman
from .wheels import build_agent_wheels, source_hash

log = logging.getLogger("aegis.lab.bake")

BAKED_REPO = "localhost/aegis-node-baked"
BAKE_HOST = "aegis_bake"
#: The lab's bake variables: the nodes of every lab fleet are managed from 10.213.0.0/16
#: (``naming.pick_network``); a fleet booted from the image is converged with the same.
LAB_BAKE_VARS: dict[str, Any] = {
    "harden_nftables_management_networks": ["10.213.0.0/16"],
    "harden_nftables_allow_controller": False,
}
#: What a baked image must not contain (checked in the committed image): a shell test per
#: item, true when the item is clean.
IDENTITY_CHECKS = {
    "machine-id": "! test -s /etc/machine-id",
    "SSH host keys": "! ls /etc/ssh/ssh_host_* >/dev/null 2>&1",
    "agent keys/spool": "! test -e /var/lib/aegis/agent && ! test -e /var/lib/aegis/spool",
    "agent configuration": "! test -e /etc/aegis/agent.yaml",
    "authorized_keys": "! test -e /root/.ssh/authorized_keys",
    "apt lists": "test -z \"$(ls -A /var/lib/apt/lists 2>/dev/null)\"",
    "journal": "test -z \"$(ls -A /var/log/journal 2>/dev/null)\"",
}


class BakeError(RuntimeError):
    """The golden image could not be baked; the message says which step failed."""


@dataclass(frozen=True)
class BakedImage:
    ref: str
    digest: str
    base: str
    built: bool
    seconds: float
    variables: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"ref": self.ref, "digest": self.digest, "base": self.base,
                "built": self.built, "seconds": round(self.seconds, 2)}


def bake_variables(overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The lab's bake variables with ``overrides`` on top (the same a fleet booted from
    the image is converged with)."""
    return {**LAB_BAKE_VARS, **dict(overrides or {})}


def load_variables(path: str | Path | None) -> dict[str, Any]:
    """Bake variables from a YAML/JSON file (a mapping of role variables)."""
    if not path:
        return {}
    p = Path(path)
    if not p.is_file():
        raise LabInputError(f"bake variables file {p} not found")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise LabInputError(f"bake variables file {p} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise LabInputError(f"bake variables file {p} must hold a mapping of variable "
                            "names to values, e.g. `harden_sshd_port: 22`")
    return data


def _files(root: Path) -> Iterable[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def bake_digest(paths: Paths, base_ref: str, variables: Mapping[str, Any]) -> str:
    """12 hex digits over everything the baked image is made of."""
    repo = paths.repo_root
    h = hashlib.sha256()
    h.update(base_ref.encode() + b"\0")
    sources = [*_files(repo / "roles" / "harden"), *_files(repo / "roles" / "agent"),
               *_files(repo / "plugins"), paths.playbooks / "bake.yml",
               *sorted(paths.bpf_build.glob("*.bpf.o"))]
    for f in sources:
        h.update(str(f.relative_to(repo)).encode() + b"\0" + f.read_bytes() + b"\0")
    h.update(source_hash(paths).encode() + b"\0")
    h.update(json.dumps(dict(variables), sort_keys=True, default=str).encode())
    return h.hexdigest()[:12]


def _wait_for_systemd(container: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        res = podman("exec", container, "systemctl", "is-system-running", check=False,
                     timeout=30)
        state = res.stdout.strip()
        if state in ("running", "degraded"):
            return
        time.sleep(0.5)
    raise BakeError(f"build container {container} did not finish booting (systemd: "
                    f"{state or 'no answer'}); see `podman logs {container}`")


def _inventory(where: Path, container: str) -> Path:
    inv = where / "bake.yml"
    inv.write_text(yaml.safe_dump({"all": {"hosts": {BAKE_HOST: {
        "ansible_connection": "containers.podman.podman",
        "ansible_host": container,
        "ansible_python_interpreter": "/usr/bin/python3",
    }}}}))
    return inv


def check_no_identity(ref: str) -> list[str]:
    """The identity items still present in image ``ref`` (empty when it is clean); read
    from the image's own files, without booting it."""
    script = "; ".join(f"{test} || echo {json.dumps(name)}"
                       for name, test in IDENTITY_CHECKS.items())
    res = podman("run", "--rm", "--network", "none", "--systemd", "false",
                 "--entrypoint", "/bin/sh", ref, "-c", script, timeout=120)
    return [ln for ln in res.stdout.splitlines() if ln.strip()]


def bake_image(paths: Paths, *, prefix: str = "aegis",
               variables: Mapping[str, Any] | None = None,
               progress: Callable[[str], None] = log.info, timeout: float = 1800) -> BakedImage:
    """Return the baked image for the current roles and ``variables`` (the lab's bake
    variables with these on top), baking it only if no image has its tag yet. The build
    container is ``<prefix>_bake`` (labelled ``aegis.prefix=<prefix>``; the underscore keeps it
    apart from every node name, so a fleet of the same prefix can have a node ``bake``)."""
    from .playbook import ansible_env

    started = time.monotonic()
    check_prefix(prefix)
    bake_vars = bake_variables(variables)
    base = ensure_image(progress=progress)
    build_agent_wheels(paths)
    digest = bake_digest(paths, base.ref, bake_vars)
    ref = f"{BAKED_REPO}:{digest}"
    with _locked(CACHE_ROOT / "images" / ".bake.lock"):
        if image_exists(ref):
            progress(f"baked image {ref} is up to date (roles and variables unchanged)")
            return BakedImage(ref, digest, base.ref, False, time.monotonic() - started,
                              bake_vars)
        container = f"{prefix}_bake"
        progress(f"baking {ref} from {base.ref} in build container {container}")
        podman("rm", "-f", "--ignore", "-t", "0", container)
        try:
            podman("create", "--name", container, "--hostname", "aegis-bake",
                   "--network", "none", "--systemd", "always", "--cap-add", CAPS["admin"],
                   "--label", f"aegis.prefix={prefix}", "--label", "aegis.bake=1", base.ref)
            podman("start", container)
            _make_proc_sys_net_writable(container_pid(container))
            _wait_for_systemd(container, 120)
            progress("running playbooks/bake.yml (harden, agent install, identity removal)")
            with tempfile.TemporaryDirectory(prefix="aegis-bake-") as tmp:
                runner = Ansible(paths.runs, env=ansible_env(paths))
                result = runner.run(
                    paths.playbooks / "bake.yml", inventory=_inventory(Path(tmp), container),
                    extravars={**bake_vars, "bake_target": BAKE_HOST},
                    on_event=Progress("bake", emit=progress), timeout=timeout, check=False)
            if not result.ok:
                first = result.failures[0] if result.failures else None
                why = (f"task {first.task!r}: {first.message}" if first
                       else f"{result.status} (rc {result.rc}): {result.tail()}")
                raise BakeError(f"bake.yml failed on the build container, {why}")
            progress(f"committing {container} as {ref}")
            podman("commit", "--pause=true", "--change", 'CMD ["/sbin/init"]',
                   "--change", "STOPSIGNAL SIGRTMIN+3",
                   "--change", f"LABEL aegis.baked-from={base.ref}",
                   container, ref, timeout=600)
        finally:
            podman("rm", "-f", "--ignore", "-t", "0", container, check=False, timeout=120)
        left = check_no_identity(ref)
        if left:
            podman("rmi", "--force", ref, check=False)
            raise BakeError(f"the baked image still held per-node identity ({', '.join(left)});"
                            " it was removed: fix the identity removal in playbooks/bake.yml")
    seconds = time.monotonic() - started
    progress(f"baked {ref} in {seconds:.0f} s")
    return BakedImage(ref, digest, base.ref, True, seconds, bake_vars)
