"""Pinned versions of the control-plane binaries.

One place to bump: the Go wrapper modules under ``hack/gomod/`` are generated from these
(``python -m localcluster gomod``) and the binary cache is keyed by them. Which binaries each
module gives is ``binaries.BINARIES``.
"""

from __future__ import annotations

from typing import Final

KUBERNETES_VERSION: Final = "v1.34.4"
ETCD_VERSION: Final = "v3.5.35"
KWOK_VERSION: Final = "v0.7.0"
METRICS_SERVER_VERSION: Final = "v0.8.0"
CRI_TOOLS_VERSION: Final = "v1.34.0"
#: The newest kube-router the Go module proxy serves here.
KUBE_ROUTER_VERSION: Final = "v2.1.0"
#: What kubeadm v1.34 deploys (cmd/kubeadm/app/constants: CoreDNSVersion).
COREDNS_VERSION: Final = "v1.12.1"
#: The Prometheus Go module (Prometheus 3.x is tagged v0.3xx.y for Go): promtool checks and
#: unit-tests the alerting rules in manifests/monitoring/.
PROMETHEUS_VERSION: Final = "v0.316.0"


def staging_version(kubernetes_version: str = KUBERNETES_VERSION) -> str:
    """Staging modules (k8s.io/api, client-go, ...) are tagged v0.<minor>.<patch>."""
    major, minor, patch = kubernetes_version.lstrip("v").split(".")
    if major != "1":
        raise ValueError(f"unexpected Kubernetes version {kubernetes_version}")
    return f"v0.{minor}.{patch}"
