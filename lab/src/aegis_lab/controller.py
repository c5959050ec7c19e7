"""A controller for a lab fleet: ``aegis-controller serve`` on the fleet bridge's gateway
address (where the nodes reach it; no NAT, no host firewall rule), with its state under
``.state/fleets/<prefix>/<prefix>-controller``. Used by the demo and the agent's Molecule
scenario; ``aegis-lab cleanup`` stops it with the fleet.

``controller.json`` records the process's PID together with its start time and command
line as ``/proc`` shows them; a PID is only ever signalled (through a pidfd, so it cannot
be reused between the check and the signal) while both still match. A state file whose
PID now belongs to something else is stale: it is removed and nothing is signalled.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import select
import signal
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from aegis_controller.processes import process_start

from .network import free_port

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
    data["running"] = _is_ours(data, fleet)
    return data


def _identity(pid: int) -> tuple[int, list[str]] | None:
    """(start time in clock ticks since boot, argv) of a live process, or None."""
    starttime = process_start(pid)
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    if starttime is None:
        return None
    return starttime, [a.decode(errors="replace") for a in argv if a]


def _is_ours(data: dict, fleet: LocalFleet) -> bool:
    """Whether the recorded PID is still this fleet's controller: same start time and
    command line as recorded at launch (a state file from before they were recorded:
    a ``serve`` with this fleet's ``--state-dir`` on its command line)."""
    pid = data.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    found = _identity(pid)
    if found is None:
        return False
    starttime, argv = found
    if "starttime" in data:
        return starttime == data["starttime"] and argv == data.get("cmdline")
    state = str(controller_dir(fleet))
    return "serve" in argv and any(a == "--state-dir" and b == state
                                   for a, b in itertools.pairwise(argv))


def up(fleet: LocalFleet, timeout: float = 30, *, port: int | None = None,
       extra_args: Sequence[str] = ()) -> dict:
    """Start the fleet's controller on its bridge's gateway (or find it running);
    returns url, ca_file, pid. ``extra_args`` go to ``serve`` (secrets gate, recovery)."""
    current = show(fleet)
    if current and current["running"]:
        return current
    return start(fleet, fleet.info()["gateway"], timeout, port=port, extra_args=extra_args)


def start(fleet: LocalFleet, host: str, timeout: float = 30, *, port: int | None = None,
          extra_args: Sequence[str] = ()) -> dict:
    """Start the fleet's controller on ``host`` (``port``, else a free one) and record it
    in ``controller.json``."""
    state = controller_dir(fleet)
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    command = controller_command(fleet)
    if not (state / "keys").exists():
        subprocess.run([*command, "keys", "init"], check=True, capture_output=True, text=True)
    port = port or free_port(host)
    log = (state / "serve.log").open("a")
    proc = subprocess.Popen([*command, "serve", "--host", host, "--port", str(port),
                             *extra_args], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    info: dict = {"url": f"https://{host}:{port}", "ca_file": str(state / "ca" / "ca.pem"),
                  "state_dir": str(state), "port": port, "gateway": host, "pid": proc.pid}
    deadline = time.monotonic() + timeout
    while not ((state / "ca" / "ca.pem").exists() and _healthy(info["url"], state / "ca/ca.pem")):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise LabControllerError(f"the controller did not come up on {info['url']}: "
                                     f"{(state / 'serve.log').read_text()[-2000:]}")
        time.sleep(0.1)
    # read once it answers: right after exec /proc shows an empty command line for a while
    found = _identity(proc.pid)
    if found is None or not found[1]:
        proc.kill()
        raise LabControllerError(f"the controller on {info['url']} exited after start")
    info["starttime"], info["cmdline"] = found
    (state / "controller.json").write_text(json.dumps(info, indent=2) + "\n")
    info["running"] = True
    return info


def down(fleet: LocalFleet) -> str:
    """Stop the fleet's controller (its state stays until the fleet's state is removed).

    Returns ``"stopped"``, ``"stale"`` (the recorded PID is not this fleet's controller
    any more: nothing was signalled) or ``"absent"`` (no controller was recorded). The
    state file is removed in every case."""
    info = controller_dir(fleet) / "controller.json"
    current = show(fleet)
    outcome = "absent" if current is None else "stale"
    if current is not None:
        try:
            pidfd = os.pidfd_open(current["pid"])
        except OSError:  # gone since show()
            pidfd = -1
        if pidfd >= 0:
            try:
                # checked again with the pidfd held: a PID reused after this check is
                # not the process the pidfd refers to, so the signal cannot reach it
                if _is_ours(current, fleet):
                    _terminate(pidfd)
                    outcome = "stopped"
            finally:
                os.close(pidfd)
    info.unlink(missing_ok=True)
    return outcome


def _terminate(pidfd: int, grace: float = 10) -> None:
    """SIGTERM through the pidfd, SIGKILL after ``grace`` seconds."""
    with contextlib.suppress(ProcessLookupError):
        signal.pidfd_send_signal(pidfd, signal.SIGTERM)
    if not select.select([pidfd], [], [], grace)[0]:  # readable once the process exits
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        select.select([pidfd], [], [], grace)
