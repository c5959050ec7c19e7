"""Test harness: real fleets, namespaces and servers, each created under a per-run
prefix and removed on exit even when the body fails.

The pytest fixtures in conftest.py wrap these context managers; tests that check the
cleanup itself use them directly.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import struct
import subprocess
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pyroute2 import NetNS, netns

from aegis_lab.cleanup import down, sweep
from aegis_lab.fleet import LocalFleet
from aegis_lab.network import free_port  # noqa: F401 (the tests' name)
from aegis_lab.openbao import OpenBao, openbao_dev  # noqa: F401 (the tests' names)
from aegis_lab.paths import Paths

#: The checkout and state dir under test, found by the lab's one rule (AEGIS_REPO, else
#: the checkout aegis-lab is installed from).
PATHS = Paths.discover()
REPO = PATHS.repo_root
VENV_BIN = REPO / ".venv" / "bin"


def group_gone(pgid: int) -> bool:
    """Whether no process of process group ``pgid`` is left."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def wait_until(pred, timeout: float = 60.0, step: float = 0.2) -> bool:
    """Poll ``pred`` until it is true (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return False


# -- local fleet ------------------------------------------------------------------------
@contextlib.contextmanager
def local_fleet(prefix: str, size: int, caps: str = "base",
                baked: bool = False, names: list[str] | None = None) -> Iterator[LocalFleet]:
    """A fleet of ``size`` nodes (named ``names``, else node1..) at capability level
    ``caps`` (``aegis_lab.naming.CAPS``: ``admin`` for roles that mount or use a scratch
    netns, ``agent`` for the agent), booted from the baked golden image when ``baked``
    (``aegis_lab.bake``)."""
    fleet = LocalFleet(prefix, PATHS)
    try:
        fleet.up(size=size, names=names, caps=caps, baked=baked)
        yield fleet
    finally:
        try:
            down(fleet)
        finally:
            sweep(fleet)


# -- network namespaces -------------------------------------------------------------------
CLONE_NEWNET = 0x40000000


def enter_netns(ns: str) -> None:
    """Move the calling thread into network namespace ``ns`` (``/run/netns/ns``): the
    initializer of a one-thread executor whose sockets live there."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {ns}")
    finally:
        os.close(fd)


@dataclass(frozen=True)
class NetnsPair:
    """Two namespaces joined by a veth pair: ``a`` (192.0.2.1) and ``b`` (192.0.2.2)."""

    a: str
    b: str
    a_if: str
    b_if: str
    a_addr: str = "192.0.2.1"
    b_addr: str = "192.0.2.2"

    def run(self, ns: str, *cmd: str, check: bool = True, timeout: float = 30,
            **kw) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", ns, *cmd], check=check,
                              capture_output=True, text=True, timeout=timeout, **kw)


def _up(ns: str, ifname: str, address: str | None = None) -> None:
    """Bring ``ifname`` in namespace ``ns`` up, with ``address``/24 if given."""
    with NetNS(ns) as ipr:
        index = ipr.link_lookup(ifname=ifname)[0]
        if address:
            ipr.addr("add", index=index, address=address, prefixlen=24)
        ipr.link("set", index=index, state="up")


@contextlib.contextmanager
def netns_pair(prefix: str) -> Iterator[NetnsPair]:
    pair = NetnsPair(a=f"{prefix}-a", b=f"{prefix}-b", a_if=f"{prefix}a0", b_if=f"{prefix}b0")
    try:
        for ns in (pair.a, pair.b):
            netns.create(ns)
            _up(ns, "lo")
        with NetNS(pair.a) as ipr:
            ipr.link("add", ifname=pair.a_if, kind="veth",
                     peer={"ifname": pair.b_if, "net_ns_fd": pair.b})
        _up(pair.a, pair.a_if, pair.a_addr)
        _up(pair.b, pair.b_if, pair.b_addr)
        yield pair
    finally:
        # Deleting a namespace takes its end of the veth (and so the peer) with it.
        for ns in (pair.a, pair.b):
            with contextlib.suppress(OSError):
                netns.remove(ns)


# an event of a kind this agent's event model does not know (another version's)
FUTURE_EVENT = b'{"ts_ns": 1, "kind": "file_open", "severity": "info", "data": {}}'


def foreign_record(directory: Path, seq: int, payload: bytes) -> None:
    """Append a record with a good checksum but ``payload`` as written, to the newest
    segment of the (closed) spool at ``directory``: what another agent version wrote."""
    from aegis_agent.spool import HEADER, MAGIC

    seg = sorted(directory.glob("seg-*.log"))[-1]
    crc = zlib.crc32(struct.pack("<Q", seq) + payload)
    with seg.open("ab") as fh:
        fh.write(HEADER.pack(MAGIC, len(payload), crc, seq) + payload)

