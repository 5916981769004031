"""A throw-away certificate authority for TLS tests, and htpasswd files with bcrypt entries.

Certificates are made with the `cryptography` package: a CA, server certificates for
127.0.0.1 (IP SAN, which is what curl, skopeo and Python check) and client certificates for
mTLS. Keys are EC P-256: generating them takes milliseconds."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import bcrypt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


@dataclass
class Issued:
    cert: Path
    key: Path
    serial: int


class TestCA:
    """`TestCA(dir)` makes ca.crt/ca.key in `dir`; `server()` and `client()` issue more."""

    __test__ = False  # not a pytest test class

    def __init__(self, directory: Path, name: str = "mirror test CA") -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.dir = directory
        self._key = _key()
        now = datetime.datetime.now(datetime.UTC)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self._name = subject
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()),
                           critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self.cert = directory / "ca.crt"
        self.cert.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    def _issue(self, stem: str, cn: str, usage: x509.ObjectIdentifier,
               ips: tuple[str, ...] = (), dns: tuple[str, ...] = ()) -> Issued:
        key = _key()
        now = datetime.datetime.now(datetime.UTC)
        serial = x509.random_serial_number()
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self._name)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self._key.public_key()), critical=False)
        )
        names: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        names += [x509.DNSName(d) for d in dns]
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        cert_path, key_path = self.dir / f"{stem}.crt", self.dir / f"{stem}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key, key_path)
        return Issued(cert_path, key_path, serial)

    def server(self, stem: str = "server", ip: str = "127.0.0.1") -> Issued:
        return self._issue(stem, ip, ExtendedKeyUsageOID.SERVER_AUTH, ips=(ip,), dns=("localhost",))

    def client(self, stem: str = "client", cn: str = "test-client") -> Issued:
        return self._issue(stem, cn, ExtendedKeyUsageOID.CLIENT_AUTH)


def served_serial(host: str, port: int, ca: Path, client: Issued | None = None) -> int:
    """Serial number of the certificate a TLS server presents (verified against `ca`)."""
    import socket
    import ssl

    ctx = ssl.create_default_context(cafile=str(ca))
    if client is not None:
        ctx.load_cert_chain(client.cert, client.key)
    with socket.create_connection((host, port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname=host) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def write_htpasswd(path: Path, users: dict[str, str], rounds: int = 4) -> Path:
    """An htpasswd file with bcrypt entries; cost 4 keeps tests fast (production: 10+)."""
    lines = [f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds)).decode()}"
             for u, p in users.items()]
    path.write_text("\n".join(lines) + "\n")
    return path
