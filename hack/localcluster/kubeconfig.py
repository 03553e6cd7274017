"""Write kubeconfig files with the credentials embedded.

Embedded (not file references) so a kubeconfig can be copied or mounted elsewhere and still
work. Written as plain text to avoid a YAML dependency in the harness.
"""

from __future__ import annotations

import base64
from pathlib import Path

from localcluster import certs


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def write(
    path: Path,
    *,
    server: str,
    ca_cert: Path,
    client_cert: Path,
    client_key: Path,
    cluster_name: str = "localcluster",
    user: str = "admin",
) -> Path:
    """Write a single-context kubeconfig for ``user`` on ``server``."""
    text = f"""apiVersion: v1
kind: Config
clusters:
- name: {cluster_name}
  cluster:
    server: {server}
    certificate-authority-data: {_b64(ca_cert)}
users:
- name: {user}
  user:
    client-certificate-data: {_b64(client_cert)}
    client-key-data: {_b64(client_key)}
contexts:
- name: {user}@{cluster_name}
  context:
    cluster: {cluster_name}
    user: {user}
    namespace: default
current-context: {user}@{cluster_name}
preferences: {{}}
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o600)
    return path


def write_for(
    path: Path, who: str, *, server: str, pki: certs.Pki, user: str | None = None
) -> Path:
    """A kubeconfig with the client certificate ``certs`` issued for ``who``."""
    return write(
        path,
        server=server,
        ca_cert=pki.ca_cert,
        client_cert=pki.client_cert(who),
        client_key=pki.client_key(who),
        **({"user": user} if user else {}),
    )
