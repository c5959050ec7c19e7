"""A real sshd (OpenSSH from the lab's node image, run with podman) inside a test network
namespace, configured like aegis.fleet.harden's certificate logins: the user CA, a
principals file per account, ``AuthorizedKeysFile none`` and the KRL the agent keeps.
Its files live in ``srv`` on the host (mounted read-only at /srv/sshd), so the agent's
:class:`~aegis_agent.revoked_keys.RevokedKeys` writes the very KRL sshd reads; and the
``ssh`` client of the host logs in from another namespace.

sshd logs to syslog, as on a node: its /dev/log is a socket of the host served by
:class:`SyslogFile`, a stand-in for the node's syslog daemon (rsyslog writing
/var/log/auth.log) that writes each message as a line ``sshd[PID]: ...`` to a file — the
file the agent's :class:`~aegis_agent.ssh_sessions.SshSessions` follows.
"""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from aegis_lab.image import ensure_image
from aegis_lab.podman import podman, podman_env
from harness import NetnsPair

PORT = 2222
MOUNT = "/srv/sshd"


class SyslogFile:
    """A stand-in for the node's syslog daemon: datagrams on the unix socket ``sock``
    (what syslog(3) sends to /dev/log: ``<PRI>Mmm dd hh:mm:ss tag[pid]: message``) each
    written as one line, without the priority, to ``path``."""

    _PRI = re.compile(rb"^<\d{1,3}>")

    def __init__(self, sock: Path, path: Path) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(sock))
        sock.chmod(0o666)
        self._out = path.open("ab", buffering=0)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                data = self._sock.recv(65536)
            except OSError:
                return
            if not data:  # close() wakes recv with an empty datagram
                return
            self._out.write(self._PRI.sub(b"", data.rstrip(b"\n")) + b"\n")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._thread.join(timeout=5)
        self._out.close()


@dataclass
class Sshd:
    pair: NetnsPair
    srv: Path  # host side of /srv/sshd
    name: str  # the container
    proc: subprocess.Popen
    log_file: Path  # the container's output
    syslog: SyslogFile  # sshd's own log

    @property
    def krl(self) -> Path:
        return self.srv / "revoked.krl"

    @property
    def ca_public_key(self) -> Path:
        return self.srv / "ca.pub"

    def login(self, key: Path, cert: Path, account: str = "root",
              command: str = "echo hello-$((6*7))") -> subprocess.CompletedProcess:
        """``ssh -i KEY -o CertificateFile=CERT account@sshd command`` from namespace a."""
        return subprocess.run(self.ssh_argv(key, cert, account, command), check=False,
                              capture_output=True, text=True, timeout=60)

    def ssh_argv(self, key: Path, cert: Path, account: str, command: str) -> list[str]:
        """The command line of :meth:`login` (to start one in the background)."""
        return ["ip", "netns", "exec", self.pair.a, "ssh", "-F", "/dev/null", "-i", str(key),
                "-o", f"CertificateFile={cert}", "-o", "IdentitiesOnly=yes",
                "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=10",
                "-p", str(PORT), f"{account}@{self.pair.b_addr}", command]

    def log(self) -> str:
        """sshd's own log (through syslog) and the container's output so far."""
        return (self.syslog.path.read_text(errors="replace")
                + self.log_file.read_text(errors="replace"))


def keygen(path: Path) -> Path:
    """A fresh ed25519 key pair at ``path`` (and ``path``.pub); returns the public file."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f",
                    str(path)], check=True, capture_output=True)
    return path.with_name(path.name + ".pub")


@contextlib.contextmanager
def sshd_in_netns(pair: NetnsPair, srv: Path, name: str, ca_public_key: str,
                  principals: dict[str, list[str]]) -> Iterator[Sshd]:
    """sshd on ``pair.b_addr``:PORT in namespace ``pair.b`` trusting ``ca_public_key``,
    ``principals``: account -> principals that may log in as it."""
    srv.mkdir(exist_ok=True)
    keygen(srv / "host_key")
    (srv / "ca.pub").write_text(ca_public_key.strip() + "\n")
    (srv / "principals").mkdir()
    for account, names in principals.items():
        (srv / "principals" / account).write_text("".join(f"{n}\n" for n in names))
    subprocess.run(["ssh-keygen", "-q", "-k", "-f", str(srv / "revoked.krl")], check=True)
    (srv / "sshd_config").write_text(f"""\
Port {PORT}
ListenAddress {pair.b_addr}
HostKey {MOUNT}/host_key
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
AuthenticationMethods publickey
PermitRootLogin prohibit-password
TrustedUserCAKeys {MOUNT}/ca.pub
AuthorizedPrincipalsFile {MOUNT}/principals/%u
RevokedKeys {MOUNT}/revoked.krl
AuthorizedKeysFile none
UsePAM no
PidFile none
LogLevel VERBOSE
""")
    ref = ensure_image().ref
    syslog = SyslogFile(srv.parent / f"{name}.syslog.sock", srv.parent / f"{name}.auth.log")
    cmd = ["podman", "run", "--rm", "--name", name, "--network", f"ns:/run/netns/{pair.b}",
           "-v", f"{srv}:{MOUNT}:ro", "-v", f"{srv.parent / f'{name}.syslog.sock'}:/dev/log",
           ref, "sh", "-c",
           f"mkdir -p -m 0755 /run/sshd && exec /usr/sbin/sshd -D -f {MOUNT}/sshd_config"]
    log_file = srv.parent / f"{name}.log"
    try:
        with log_file.open("w") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                    env=podman_env())
    except BaseException:
        syslog.close()
        raise
    server = Sshd(pair, srv, name, proc, log_file, syslog)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"sshd exited: {server.log()}"
            probe = pair.run(pair.b, "ss", "-Htln", f"sport = :{PORT}", check=False)
            if str(PORT) in probe.stdout:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"sshd did not listen on {PORT}: {server.log()}")
        yield server
    finally:
        podman("rm", "-f", "-t", "0", name, check=False)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        syslog.close()
