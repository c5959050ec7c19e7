"""Private state stays private outside systemd too (issue 12 item 17): the controller's
commands create the state directory 0700 and the database and keys 0600 whatever the
caller's umask, and every private key (orders, CA, ledger, the agent's) is refused on
load when others may read it."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aegis_protocol.files import private_key

pytestmark = pytest.mark.unit

CTL = Path(sys.executable).parent / "aegis-controller"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _ctl(state: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(CTL), "--state-dir", str(state), *args], capture_output=True,
                          text=True, timeout=120, check=False, env=dict(os.environ),
                          preexec_fn=lambda: os.umask(0o022))  # a usual login umask


@pytest.mark.parametrize("kind", [Ed25519PrivateKey, ec.EllipticCurvePrivateKey])
def test_a_key_others_can_read_is_refused(tmp_path: Path, kind: type) -> None:
    path = tmp_path / "keys" / "k.key"
    private_key(path, kind)
    assert _mode(path) == 0o600 and _mode(path.parent) == 0o700
    path.chmod(0o640)
    with pytest.raises(ValueError, match=rf"{path} is readable by others \(mode 0640\): "
                       rf"run `chmod 600 {path}`"):
        private_key(path, kind)
    path.chmod(0o600)
    assert isinstance(private_key(path, kind), kind)


def test_the_controller_creates_its_state_private_and_checks_every_key(
        tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert _ctl(state, "keys", "init").returncode == 0
    out = _ctl(state, "token", "issue", "n1")  # opens the database, CA and order key
    assert out.returncode == 0, out.stderr
    assert _mode(state) == 0o700
    for private in ("controller.db", "ca/ca.key", "keys/orders.key", "keys/ledger.key"):
        assert _mode(state / private) == 0o600, private
    for name, command in (("keys/orders.key", ("token", "issue", "n2")),
                          ("ca/ca.key", ("operator-cert", "alice", "--out",
                                         str(tmp_path / "ops"))),
                          ("keys/ledger.key", ("token", "issue", "n3"))):
        (state / name).chmod(0o644)
        out = _ctl(state, *command)
        assert out.returncode == 2, (name, out.stderr)
        assert f"{state / name} is readable by others (mode 0644)" in out.stderr, out.stderr
        assert f"chmod 600 {state / name}" in out.stderr
        (state / name).chmod(0o600)
    assert _ctl(state, "operator-cert", "alice", "--out", str(tmp_path / "ops")).returncode == 0
