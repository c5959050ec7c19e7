"""The node's TLS key and certificate switch as one pair: a crash at any step of an
install (or of adopting an older agent's two plain files) leaves a key with its own
certificate."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from aegis_agent import tls_pair
from aegis_protocol.files import key_pem

pytestmark = pytest.mark.unit


class Crash(Exception):
    pass


def _pair(key: ec.EllipticCurvePrivateKey | None = None,
          ) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    key = key or ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "n1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    return key, cert.public_bytes(serialization.Encoding.PEM)


def _matching(state: Path) -> bytes:
    """The installed certificate, after checking the installed key is its key."""
    cert = x509.load_pem_x509_certificate((state / "node.pem").read_bytes())
    key = serialization.load_pem_private_key((state / "tls.key").read_bytes(), None)
    assert cert.public_key() == key.public_key()
    return (state / "node.pem").read_bytes()


def _crash_at(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """Every file-system step (write, rename, link) counts; the ``n``-th one crashes."""
    calls = [0]
    for module, name in ((os, "replace"), (os, "symlink"), (tls_pair, "write_atomically")):
        real = getattr(module, name)

        def step(*a: object, _real=real, **k: object) -> object:
            calls[0] += 1
            if calls[0] == n:
                raise Crash(f"crash at step {n}")
            return _real(*a, **k)

        monkeypatch.setattr(module, name, step)


@pytest.mark.parametrize("layout", ["plain files of an older agent", "generations"])
def test_a_crash_at_any_step_leaves_a_matching_pair(tmp_path: Path, layout: str) -> None:
    n = 1
    while True:
        state = tmp_path / str(n)
        state.mkdir()
        old_key, old_cert = _pair()
        if layout == "generations":
            tls_pair.install(state, old_key, old_cert)
        else:
            (state / "tls.key").write_bytes(key_pem(old_key))
            (state / "node.pem").write_bytes(old_cert)
        new_key, new_cert = _pair()
        with pytest.MonkeyPatch.context() as mp:
            _crash_at(mp, n)
            try:
                tls_pair.install(state, new_key, new_cert)
                finished = True
            except Crash:
                finished = False
        assert _matching(state) in (old_cert, new_cert), f"crash at step {n}"
        if finished:
            assert _matching(state) == new_cert
            assert (state / "tls.key").stat().st_mode & 0o777 == 0o600
            break
        n += 1
    assert n > 4  # every step was crashed at once


def test_the_next_key_is_kept_until_its_certificate_is_installed(tmp_path: Path) -> None:
    first = tls_pair.next_key(tmp_path)
    again = tls_pair.next_key(tmp_path)  # a retry after a lost reply: the same key
    assert first.private_numbers() == again.private_numbers()
    with pytest.raises(ValueError, match="not for this node's new TLS key"):
        tls_pair.install(tmp_path, first, _pair()[1])
    tls_pair.install(tmp_path, first, _pair(first)[1])
    assert not (tmp_path / "tls-next.key").exists()
    assert tls_pair.next_key(tmp_path).private_numbers() != first.private_numbers()
