"""Pinned versions of the control-plane binaries.

One place to bump: the Go wrapper modules under ``hack/gomod/`` are generated from these
(``python -m localcluster gomod``) and the binary cache is keyed by them.
"""

from __future__ import annotations

from typing import Final

KUBERNETES_VERSION: Final = "v1.34.4"
ETCD_VERSION: Final = "v3.5.35"
KWOK_VERSION: Final = "v0.7.0"

#: Binary name -> Go main package. Order matters: it is the build order.
KUBERNETES_COMMANDS: Final = {
    "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
    "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
    "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
    "kubectl": "k8s.io/kubernetes/cmd/kubectl",
}
ETCD_COMMANDS: Final = {"etcd": "go.etcd.io/etcd/server/v3"}
KWOK_COMMANDS: Final = {"kwok": "sigs.k8s.io/kwok/cmd/kwok"}


def staging_version(kubernetes_version: str = KUBERNETES_VERSION) -> str:
    """Staging modules (k8s.io/api, client-go, ...) are tagged v0.<minor>.<patch>."""
    major, minor, patch = kubernetes_version.lstrip("v").split(".")
    if major != "1":
        raise ValueError(f"unexpected Kubernetes version {kubernetes_version}")
    return f"v0.{minor}.{patch}"
