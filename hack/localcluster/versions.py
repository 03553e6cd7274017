"""Pinned versions of the control-plane binaries.

One place to bump: the Go wrapper modules under ``hack/gomod/`` are generated from these
(``python -m localcluster gomod``) and the binary cache is keyed by them.
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

#: Binary name -> Go main package. Order matters: it is the build order.
KUBERNETES_COMMANDS: Final = {
    "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
    "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
    "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
    "kubectl": "k8s.io/kubernetes/cmd/kubectl",
}
#: The real node (``up --real-node``): built from the same pinned module as the control plane,
#: so node and control plane are one version. The kubelet needs cgo (cadvisor, libcontainer).
KUBERNETES_NODE_COMMANDS: Final = {
    "kubelet": "k8s.io/kubernetes/cmd/kubelet",
    "kube-proxy": "k8s.io/kubernetes/cmd/kube-proxy",
}
CGO_COMMANDS: Final = frozenset({"kubelet"})
ETCD_COMMANDS: Final = {"etcd": "go.etcd.io/etcd/server/v3"}
KWOK_COMMANDS: Final = {"kwok": "sigs.k8s.io/kwok/cmd/kwok"}
#: crictl: ``down`` removes the pods through the CRI, so their network namespaces, mounts and
#: IP leases go the proper way before containerd stops.
CRI_TOOLS_COMMANDS: Final = {"crictl": "sigs.k8s.io/cri-tools/cmd/crictl"}
#: kube-router's network policy controller only (iptables + ipset): it enforces NetworkPolicy
#: on this kernel, which lacks the nft queue that kube-network-policies needs.
KUBE_ROUTER_COMMANDS: Final = {
    "kube-router": "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router"
}
#: Feeds the HPA real CPU usage from the kubelet's summary API (real node only).
METRICS_SERVER_COMMANDS: Final = {"metrics-server": "sigs.k8s.io/metrics-server/cmd/metrics-server"}
#: Cluster DNS (real node only); the module root is CoreDNS's main package, all plugins in.
COREDNS_COMMANDS: Final = {"coredns": "github.com/coredns/coredns"}
PROMETHEUS_COMMANDS: Final = {"promtool": "github.com/prometheus/prometheus/cmd/promtool"}


def staging_version(kubernetes_version: str = KUBERNETES_VERSION) -> str:
    """Staging modules (k8s.io/api, client-go, ...) are tagged v0.<minor>.<patch>."""
    major, minor, patch = kubernetes_version.lstrip("v").split(".")
    if major != "1":
        raise ValueError(f"unexpected Kubernetes version {kubernetes_version}")
    return f"v0.{minor}.{patch}"
