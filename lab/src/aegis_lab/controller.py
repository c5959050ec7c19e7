"""A controller for a lab fleet: ``aegis-controller serve`` on the fleet bridge's gateway
address (where the nodes reach it; no NAT, no host firewall rule), with its state under
``.state/fleets/<prefix>/<prefix>-controller``. Used by the demo and the agent's Molecule
scenario; ``aegis-lab cleanup`` stops it with the fleet.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the fleet is handed in; this module does not make fleets
    from .fleet import LocalFleet


class LabControllerError(RuntimeError):
    pass


def controller_dir(fleet: LocalFleet) -> Path:
    return fleet.dir / f"{fleet.prefix}-controller"


def controller_command(fleet: LocalFleet) -> list[str]:
    """``aegis-controller --state-dir <dir>``: the lab reaches the controller only
    through its command line."""
    return [str(fleet.paths.bin_dir / "aegis-controller"), "--state-dir",
            str(controller_dir(fleet))]


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _healthy(url: str, ca: Path) -> bool:
    ctx = ssl.create_default_context(cafile=str(ca))
    try:
        with urllib.request.urlopen(f"{url}/healthz", context=ctx, timeout=1) as r:  # noqa: S310
            return r.status == 200
    except OSError:
        return False


def show(fleet: LocalFleet) -> dict | None:
    info = controller_dir(fleet) / "controller.json"
    if not info.exists():
        return None
    data = json.loads(info.read_text())
    data["running"] = _alive(data.get("pid", 0))
    return data


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def up(fleet: LocalFleet, timeout: float = 30) -> dict:
    """Start the fleet's controller (or find it running); returns url, ca_file, pid."""
    current = show(fleet)
    if current and current["running"]:
        return current
    gateway = fleet.info()["gateway"]
    state = controller_dir(fleet)
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    command = controller_command(fleet)
    if not (state / "keys").exists():
        subprocess.run([*command, "keys", "init"], check=True, capture_output=True, text=True)
    port = _free_port(gateway)
    log = (state / "serve.log").open("a")
    proc = subprocess.Popen([*command, "serve", "--host", gateway,
                             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    info = {"url": f"https://{gateway}:{port}", "ca_file": str(state / "ca" / "ca.pem"),
            "state_dir": str(state), "port": port, "gateway": gateway, "pid": proc.pid}
    deadline = time.monotonic() + timeout
    while not ((state / "ca" / "ca.pem").exists() and _healthy(info["url"], state / "ca/ca.pem")):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise LabControllerError(f"the controller did not come up on {info['url']}: "
                                     f"{(state / 'serve.log').read_text()[-2000:]}")
        time.sleep(0.1)
    (state / "controller.json").write_text(json.dumps(info, indent=2) + "\n")
    info["running"] = True
    return info


def down(fleet: LocalFleet) -> None:
    """Stop the fleet's controller (its state stays until the fleet's state is removed)."""
    current = show(fleet)
    if current and current["running"]:
        os.kill(current["pid"], signal.SIGTERM)
        for _ in range(100):
            if not _alive(current["pid"]):
                break
            time.sleep(0.1)
        else:
            os.kill(current["pid"], signal.SIGKILL)
    info = controller_dir(fleet) / "controller.json"
    info.unlink(missing_ok=True)
