"""The controller's small certificate authority for mutual TLS.

ECDSA P-256 throughout (every TLS stack speaks it). The CA signs the controller's server
certificate and short-lived client certificates for nodes, from CSRs whose key was made
on the node and never leaves it; a node certificate's CN is its node id, and that is the
identity the API trusts. Keys are written 0600, atomically.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from aegis_protocol.files import check_private, key_pem, write_atomically

NODE_CERT_HOURS = 24
#: Operator certificates are short-lived (a working day); `operator-cert --hours` changes it.
OPERATOR_CERT_HOURS = 8


class PkiError(ValueError):
    """A CSR or certificate is not acceptable (the message says why)."""


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def check_csr(csr_pem: str | bytes, node_id: str) -> x509.CertificateSigningRequest:
    """The CSR, if it is one, self-signed, for CN ``node_id`` and on an ECDSA P-256 key
    (what the agent makes, :mod:`aegis_agent.identity`); PkiError says what is wrong."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode() if isinstance(csr_pem, str) else csr_pem)
    except ValueError as e:
        raise PkiError(f"csr_pem is not a PEM certificate signing request ({e})") from None
    public = csr.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey) or \
            not isinstance(public.curve, ec.SECP256R1):
        got = public.curve.name if isinstance(public, ec.EllipticCurvePublicKey) \
            else type(public).__name__.removeprefix("_")
        raise PkiError(f"the CSR's key must be an ECDSA P-256 (secp256r1) key, got {got}: "
                       "make the key with ec.generate_private_key(ec.SECP256R1())")
    if not csr.is_signature_valid:
        raise PkiError("the CSR's signature does not verify with its own key")
    cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(cns) != 1 or cns[0].value != node_id:
        raise PkiError(f"the CSR's CN must be the node id {node_id!r}")
    return csr


@dataclass
class CertificateAuthority:
    directory: Path

    @property
    def key_path(self) -> Path:
        return self.directory / "ca.key"

    @property
    def cert_path(self) -> Path:
        return self.directory / "ca.pem"

    def init(self) -> None:
        """Create the CA once (an existing one is kept)."""
        if self.cert_path.exists():
            return
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = new_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Aegis controller CA")])
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(_now() - dt.timedelta(minutes=5))
                .not_valid_after(_now() + dt.timedelta(days=3650))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                             False), critical=True)
                .sign(key, hashes.SHA256()))
        write_atomically(self.key_path, key_pem(key), mode=0o600)
        write_atomically(self.cert_path, cert_pem(cert), mode=0o644)

    def _load(self) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        check_private(self.key_path, "CA private key")
        key = serialization.load_pem_private_key(self.key_path.read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return key, x509.load_pem_x509_certificate(self.cert_path.read_bytes())

    def _issue(self, public: ec.EllipticCurvePublicKey, cn: str, lifetime: dt.timedelta,
               usage: x509.ObjectIdentifier, sans: list[x509.GeneralName] | None = None
               ) -> x509.Certificate:
        ca_key, ca_cert = self._load()
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
                   .issuer_name(ca_cert.subject).public_key(public)
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(_now() - dt.timedelta(minutes=5))
                   .not_valid_after(_now() + lifetime)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(ca_key, hashes.SHA256())

    def server_cert(self, out_dir: Path, hosts: list[str]) -> tuple[Path, Path]:
        """A server key and certificate for ``hosts`` (IPs or names); returns their paths."""
        key = new_key()
        sans: list[x509.GeneralName] = []
        for h in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                sans.append(x509.DNSName(h))
        cert = self._issue(key.public_key(), hosts[0], dt.timedelta(days=365),
                           ExtendedKeyUsageOID.SERVER_AUTH, sans)
        kp, cp = out_dir / "server.key", out_dir / "server.pem"
        write_atomically(kp, key_pem(key), mode=0o600)
        write_atomically(cp, cert_pem(cert), mode=0o644)
        return kp, cp

    def sign_csr(self, csr_pem: str | bytes, node_id: str,
                 hours: float = NODE_CERT_HOURS) -> x509.Certificate:
        """A short-lived client certificate for ``node_id`` from its CSR."""
        public = check_csr(csr_pem, node_id).public_key()
        assert isinstance(public, ec.EllipticCurvePublicKey)  # check_csr made sure
        return self._issue(public, node_id, dt.timedelta(hours=hours),
                           ExtendedKeyUsageOID.CLIENT_AUTH)

    def operator_cert(self, name: str, hours: float = OPERATOR_CERT_HOURS
                      ) -> tuple[bytes, x509.Certificate]:
        """(key PEM, certificate) for an operator; the CN is ``operator:<name>``. Record its
        serial (:mod:`.operators`): only a recorded, unrevoked serial is accepted."""
        key = new_key()
        cert = self._issue(key.public_key(), f"operator:{name}", dt.timedelta(hours=hours),
                           ExtendedKeyUsageOID.CLIENT_AUTH)
        return key_pem(key), cert
