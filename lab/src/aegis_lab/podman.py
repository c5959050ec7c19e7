"""Aegis's own podman calls: the project's engine and storage settings, never the host's.

The settings come from ``containers.conf`` beside this module (runc, cgroupfs, lowered
ulimits) and a storage configuration under ``/var/lib/aegis``; both are passed through
``CONTAINERS_CONF`` / ``CONTAINERS_STORAGE_CONF`` so the host's global container
configuration is never edited.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
STORAGE_ROOT = Path(os.environ.get("AEGIS_CONTAINERS_ROOT", "/var/lib/aegis/containers"))
RUN_ROOT = Path("/run/aegis/containers")


class PodmanError(RuntimeError):
    """A podman command failed; the message carries the command and podman's own words."""


def storage_conf() -> Path:
    """Write (once) and return the storage.conf that keeps the lab's images apart."""
    path = STORAGE_ROOT / "storage.conf"
    text = (
        "# Written by aegis_lab.podman: storage for Aegis lab nodes only.\n"
        "[storage]\n"
        'driver = "overlay"\n'
        f'graphroot = "{STORAGE_ROOT / "storage"}"\n'
        f'runroot = "{RUN_ROOT / "storage"}"\n'
    )
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return path


def podman_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment every podman call of the lab runs with (also for Ansible's
    ``containers.podman.podman`` connection, the break-glass path)."""
    env = dict(os.environ if base is None else base)
    env["CONTAINERS_CONF"] = str(HERE / "containers.conf")
    env["CONTAINERS_STORAGE_CONF"] = str(storage_conf())
    return env


def podman(*args: str, check: bool = True, input_bytes: bytes | None = None,
           timeout: float | None = 120) -> subprocess.CompletedProcess[str]:
    cmd = ["podman", *args]
    proc = subprocess.run(
        cmd, env=podman_env(), capture_output=True, timeout=timeout,
        input=input_bytes, check=False,
    )
    result = subprocess.CompletedProcess(
        cmd, proc.returncode, proc.stdout.decode(errors="replace"),
        proc.stderr.decode(errors="replace"),
    )
    if check and proc.returncode != 0:
        raise PodmanError(
            f"`{' '.join(cmd)}` failed (exit {proc.returncode}): {result.stderr.strip()}"
        )
    return result


def image_exists(ref: str) -> bool:
    return podman("image", "exists", ref, check=False).returncode == 0


def container_pid(name: str) -> int:
    out = podman("inspect", "--type", "container", "--format", "{{.State.Pid}}", name).stdout
    pid = int(out.strip() or 0)
    if pid <= 0:
        raise PodmanError(f"container {name} is not running (no PID)")
    return pid


def containers_with_label(label: str) -> list[dict]:
    out = podman("ps", "-a", "--filter", f"label={label}", "--format", "json").stdout
    return json.loads(out or "[]")
