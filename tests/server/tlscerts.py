"""Test certificates: a CA and server certificates for 127.0.0.1, laid out like a mounted Secret."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


class Authority:
    """A CA that issues server certificates for 127.0.0.1 and localhost."""

    def __init__(self, folder: Path) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name("test CA"))
            .issuer_name(_name("test CA"))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.issued: list[tuple[bytes, bytes, int]] = []
        self.ca_file = folder / "ca.crt"
        self.ca_file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self) -> tuple[bytes, bytes, int]:
        """A new server certificate and key (PEM) and the certificate's serial number."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        serial = x509.random_serial_number()
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name("modelserver"))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
                ),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self.issued.append((cert.public_bytes(serialization.Encoding.PEM), key_pem, serial))
        return self.issued[-1]


class SecretVolume:
    """Files as the kubelet writes a mounted Secret: `tls.crt -> ..data/tls.crt`, where `..data`
    is a symlink swapped atomically to a new timestamped folder on each update."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._version = 0
        self.cert_file = folder / "tls.crt"
        self.key_file = folder / "tls.key"

    def write(self, cert: bytes, key: bytes) -> None:
        self._version += 1
        version = self.folder / f"..v{self._version}"
        version.mkdir()
        (version / "tls.crt").write_bytes(cert)
        (version / "tls.key").write_bytes(key)
        staging = self.folder / "..data_tmp"
        staging.symlink_to(version.name)
        staging.replace(self.folder / "..data")
        for name in ("tls.crt", "tls.key"):
            link = self.folder / name
            if not link.is_symlink():
                link.symlink_to(f"..data/{name}")
