"""The agent's KRL of revoked SSH user certificates (``revoke-ssh-cert`` orders), with the
real ssh-keygen: a CA of ssh-keygen's own signs two certificates; after the order for one,
``ssh-keygen -Q`` (the same KRL check sshd makes) finds it revoked and the other not; the
KRL is replaced whole (never half written), a repeated order changes nothing, and bad
arguments or a missing CA key are refused with the reason, leaving the KRL as it was."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from aegis_agent.config import SshKrlConfig, parse_config
from aegis_agent.revoked_keys import KrlError, RevokedKeys
from aegis_protocol.commands import CommandError

pytestmark = pytest.mark.unit


def _keygen(*args: str) -> str:
    return subprocess.run(["ssh-keygen", "-q", *args], check=True, capture_output=True,
                          text=True).stdout


def _cert(tmp: Path, name: str, serial: int) -> Path:
    _keygen("-t", "ed25519", "-N", "", "-f", str(tmp / name))
    _keygen("-s", str(tmp / "ca"), "-I", f"{name}@aegis-access/x", "-n", name,
            "-z", str(serial), "-V", "-1m:+1h", str(tmp / f"{name}.pub"))
    return tmp / f"{name}-cert.pub"


def _revoked(krl: Path, cert: Path) -> bool:
    out = subprocess.run(["ssh-keygen", "-Q", "-f", str(krl), str(cert)], capture_output=True,
                         text=True, check=False)
    assert out.returncode in (0, 1), out.stderr
    return out.returncode == 1 and "REVOKED" in out.stdout


@pytest.fixture
def krl(tmp_path: Path) -> RevokedKeys:
    _keygen("-t", "ed25519", "-N", "", "-f", str(tmp_path / "ca"))
    return RevokedKeys(SshKrlConfig(file=tmp_path / "revoked.krl",
                                    ca_public_key=tmp_path / "ca.pub",
                                    spec_file=tmp_path / "state" / "revoked_keys.spec"))


def test_a_revoked_certificate_is_in_the_krl_and_another_is_not(krl: RevokedKeys,
                                                                tmp_path: Path) -> None:
    big = 2**64 - 5  # OpenBao's serials use all 64 bits
    alice, bob = _cert(tmp_path, "alice", big), _cert(tmp_path, "bob", 7)
    krl.build()  # what a node starts with: an empty list
    assert not _revoked(krl.cfg.file, alice) and not _revoked(krl.cfg.file, bob)
    detail = krl.revoke({"serial": str(big), "key_id": "alice@aegis-access/x",
                         "reason": "revoked by alice"})
    assert f"certificate serial {big}" in detail
    assert _revoked(krl.cfg.file, alice) and not _revoked(krl.cfg.file, bob)
    assert krl.listed() == {str(big)}
    assert oct(krl.cfg.file.stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp
    # the same order again: nothing changes
    before = krl.cfg.file.read_bytes(), krl.cfg.spec_file.read_text()
    assert "already in" in krl.revoke({"serial": str(big), "key_id": "alice@aegis-access/x"})
    assert (krl.cfg.file.read_bytes(), krl.cfg.spec_file.read_text()) == before
    # a second certificate joins the first
    krl.revoke({"serial": "7", "key_id": "bob@aegis-access/x"})
    assert _revoked(krl.cfg.file, alice) and _revoked(krl.cfg.file, bob)


@pytest.mark.parametrize(("args", "message"), [
    ({"serial": "0", "key_id": "k"}, "revoke-ssh-cert: argument 'serial'"),
    ({"serial": str(2**64), "key_id": "k"}, "is over 2^64 - 1"),
    ({"serial": 12, "key_id": "k"}, "argument 'serial' has the wrong type"),
    ({"serial": "12", "key_id": "a b"}, "revoke-ssh-cert: argument 'key_id'"),
    ({"serial": "12", "key_id": "a\nserial: 1"}, "revoke-ssh-cert: argument 'key_id'"),
    ({"serial": "12"}, "revoke-ssh-cert needs the argument 'key_id'"),
])
def test_bad_arguments_are_refused_and_change_nothing(krl: RevokedKeys, args: dict,
                                                      message: str) -> None:
    krl.build()
    before = krl.cfg.file.read_bytes()
    with pytest.raises(CommandError) as e:
        krl.revoke(args)
    assert message in str(e.value)
    assert krl.cfg.file.read_bytes() == before and not krl.cfg.spec_file.exists()


def test_without_the_ca_key_nothing_is_written(krl: RevokedKeys) -> None:
    krl.build()
    before = krl.cfg.file.read_bytes()
    krl.cfg.ca_public_key.unlink()
    with pytest.raises(KrlError, match=r"no user CA public key at .*ca\.pub"):
        krl.revoke({"serial": "12", "key_id": "k"})
    assert krl.cfg.file.read_bytes() == before


def test_ssh_krl_needs_the_controller() -> None:
    with pytest.raises(ValueError, match="ssh_krl needs controller"):
        parse_config("node_id: n1\nssh_krl: {}\n")
