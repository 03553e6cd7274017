"""The PKI of a throwaway cluster: one CA, a serving cert, client certs, a service-account key.

Generated with ``cryptography`` (no cfssl/openssl CLI needed). ECDSA P-256 keys because they
are generated in microseconds, where RSA-2048 takes ~100 ms each; every component in
Kubernetes accepts them, including for signing service-account tokens (ES256).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = dt.timedelta(days=365)
FRONT_PROXY_CLIENT = "front-proxy-client"

#: Client identities: file stem -> (CN, O). ``system:masters`` bypasses RBAC entirely.
CLIENTS: dict[str, tuple[str, str | None]] = {
    "admin": ("admin", "system:masters"),
    "controller-manager": ("system:kube-controller-manager", None),
    "scheduler": ("system:kube-scheduler", None),
    # kwok writes node and pod status for fake nodes; it is not a kubelet, so it cannot use
    # the Node authorizer's system:node:<name> identity for all nodes at once.
    "kwok": ("kwok-controller", "system:masters"),
}


@dataclass(frozen=True)
class Pki:
    """Paths of the files ``generate`` wrote."""

    dir: Path

    @property
    def ca_cert(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    @property
    def serving_cert(self) -> Path:
        return self.dir / "apiserver.crt"

    @property
    def serving_key(self) -> Path:
        return self.dir / "apiserver.key"

    @property
    def sa_key(self) -> Path:
        return self.dir / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.dir / "sa.pub"

    @property
    def front_proxy_ca_cert(self) -> Path:
        return self.dir / "front-proxy-ca.crt"

    @property
    def front_proxy_ca_key(self) -> Path:
        return self.dir / "front-proxy-ca.key"

    @property
    def front_proxy_client_cert(self) -> Path:
        return self.dir / "front-proxy-client.crt"

    @property
    def front_proxy_client_key(self) -> Path:
        return self.dir / "front-proxy-client.key"

    @property
    def kubelet_serving_cert(self) -> Path:
        return self.dir / "kubelet-serving.crt"

    @property
    def kubelet_serving_key(self) -> Path:
        return self.dir / "kubelet-serving.key"

    def client_cert(self, who: str) -> Path:
        return self.dir / f"{who}.crt"

    def client_key(self, who: str) -> Path:
        return self.dir / f"{who}.key"


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.write_bytes(pem)
    path.chmod(0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))  # tolerate small clock skew
        .not_valid_after(now + VALIDITY)
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


@dataclass(frozen=True)
class _Ca:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls, cn: str) -> _Ca:
        key = _key()
        name = _name(cn)
        cert = (
            _builder(name, name, key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    def issue(
        self,
        cn: str,
        org: str | None,
        usage: x509.ObjectIdentifier,
        sans: list[x509.GeneralName] | None = None,
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = _key()
        b = (
            _builder(_name(cn, org), self.cert.subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return key, b.sign(self.key, hashes.SHA256())

    def write(self, cert_path: Path, key_path: Path) -> None:
        _write_key(key_path, self.key)
        _write_cert(cert_path, self.cert)

    @classmethod
    def load(cls, cert_path: Path, key_path: Path) -> _Ca:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise TypeError(f"{key_path} is not an EC key")
        return cls(key, x509.load_pem_x509_certificate(cert_path.read_bytes()))


def _serving_sans(service_ip: str, extra: tuple[str, ...]) -> list[x509.GeneralName]:
    dns = [
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
        "localhost",
    ]
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    for value in ("127.0.0.1", service_ip, *extra):
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(value)))
        except ValueError:
            sans.append(x509.DNSName(value))
    return sans


def generate(directory: Path, *, service_ip: str, extra_sans: tuple[str, ...] = ()) -> Pki:
    """Write both CAs, the apiserver serving cert, client certs and the service-account keys."""
    directory.mkdir(parents=True, exist_ok=True)
    pki = Pki(directory)

    ca = _Ca.create("localcluster-ca")
    ca.write(pki.ca_cert, pki.ca_key)
    key, cert = ca.issue(
        "kube-apiserver",
        None,
        ExtendedKeyUsageOID.SERVER_AUTH,
        _serving_sans(service_ip, extra_sans),
    )
    _write_key(pki.serving_key, key)
    _write_cert(pki.serving_cert, cert)
    for who, (cn, org) in CLIENTS.items():
        key, cert = ca.issue(cn, org, ExtendedKeyUsageOID.CLIENT_AUTH)
        _write_key(pki.client_key(who), key)
        _write_cert(pki.client_cert(who), cert)

    # The aggregation layer (metrics-server's APIService, later) authenticates the apiserver's
    # proxied requests with a separate CA, as kubeadm does; without it the controller-manager
    # also logs "missing content for CA bundle" errors.
    front = _Ca.create("localcluster-front-proxy-ca")
    front.write(pki.front_proxy_ca_cert, pki.front_proxy_ca_key)
    key, cert = front.issue(FRONT_PROXY_CLIENT, None, ExtendedKeyUsageOID.CLIENT_AUTH)
    _write_key(pki.front_proxy_client_key, key)
    _write_cert(pki.front_proxy_client_cert, cert)

    sa_key = _key()
    _write_key(pki.sa_key, sa_key)
    pki.sa_pub.write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return pki


#: The apiserver's identity towards kubelets (logs, exec), authorized by their webhook.
APISERVER_KUBELET_CLIENT = {
    "apiserver-kubelet-client": ("kube-apiserver-kubelet-client", "system:masters")
}


def generate_node(
    directory: Path,
    *,
    node_name: str,
    node_ips: tuple[str, ...],
    clients: Mapping[str, tuple[str, str | None]],
) -> Pki:
    """Certificates of a real node, issued by the CA ``generate`` wrote in ``directory``.

    The kubelet serves its API (logs, exec, the summary API metrics-server reads) with a cert
    for the node's IPs, so the apiserver and metrics-server can verify it against our CA.
    """
    pki = Pki(directory)
    ca = _Ca.load(pki.ca_cert, pki.ca_key)
    for who, (cn, org) in {**clients, **APISERVER_KUBELET_CLIENT}.items():
        key, cert = ca.issue(cn, org, ExtendedKeyUsageOID.CLIENT_AUTH)
        _write_key(pki.client_key(who), key)
        _write_cert(pki.client_cert(who), cert)
    sans: list[x509.GeneralName] = [x509.DNSName(node_name)]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in node_ips]
    key, cert = ca.issue(node_name, None, ExtendedKeyUsageOID.SERVER_AUTH, sans)
    _write_key(pki.kubelet_serving_key, key)
    _write_cert(pki.kubelet_serving_cert, cert)
    return pki
