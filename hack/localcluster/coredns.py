"""Cluster DNS on the real node: CoreDNS behind the ``kube-dns`` Service, as a cluster add-on.

CoreDNS (built from its pinned Go module like every other binary) runs as a host process on the
node's bridge address, its ``kubernetes`` plugin watching the API server with its own client
certificate, bound by RBAC to what kubeadm's ``system:coredns`` ClusterRole allows. The
``kube-system/kube-dns`` Service has the fixed cluster IP ``DNS_SERVICE_IP`` and a hand-made
EndpointSlice pointing at that process, so kube-proxy routes pods' queries there; the kubelet's
``clusterDNS`` names the Service IP, so every pod's resolv.conf uses it with the usual search
domains. Nothing is forwarded off the machine: names outside the cluster domain are not
answered (the host's resolver is not for pods, which have no route out anyway).

Everything here is pure (renderers of the Corefile, command line and API objects) except
``register``, which sends the objects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CLUSTER_DOMAIN = "cluster.local"
#: The tenth address of the service range, as kubeadm picks it (``10.0.0.10`` here).
DNS_SERVICE_IP = "10.0.0.10"
SERVICE_NAME = "kube-dns"
NAMESPACE = "kube-system"
#: The identity of its client certificate, bound to ``CLUSTER_ROLE`` (nothing else).
USER = "system:coredns"
CLUSTER_ROLE = "system:coredns"
KUBECONFIG_CONTEXT = "coredns@localcluster"  # kubeconfig.write's <user>@<cluster>


def corefile(*, bind: str, port: int, health_port: int, ready_port: int, kubeconfig: Path) -> str:
    """The Corefile: the cluster domain and reverse zones from the API, nothing forwarded.

    ``ready`` answers 200 once the kubernetes plugin has synced its caches; ``health`` and
    ``ready`` listen on loopback only.
    """
    return f"""# Written by localcluster: cluster DNS of the real node.
.:{port} {{
    bind {bind}
    errors
    health 127.0.0.1:{health_port}
    ready 127.0.0.1:{ready_port}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig} {KUBECONFIG_CONTEXT}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
    }}
    cache 30
    loop
    loadbalance
}}
"""


def command(binary: Path, corefile_path: Path) -> list[str]:
    return [str(binary), "-conf", str(corefile_path)]


def api_objects(*, node_ip: str, port: int) -> list[tuple[str, dict[str, Any]]]:
    """RBAC for CoreDNS, the ``kube-dns`` Service and its EndpointSlice (API path, body).

    The Service has no selector: its one endpoint is the host process on ``node_ip:port``,
    as the metrics API's is; kube-proxy DNATs ``DNS_SERVICE_IP:53`` there.
    """
    labels = {"k8s-app": SERVICE_NAME, "kubernetes.io/name": "CoreDNS"}
    meta = {"name": SERVICE_NAME, "namespace": NAMESPACE, "labels": labels}
    ports = [("dns", "UDP"), ("dns-tcp", "TCP")]
    return [
        (
            "/apis/rbac.authorization.k8s.io/v1/clusterroles",
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": CLUSTER_ROLE},
                "rules": [
                    {
                        "apiGroups": [""],
                        "resources": ["endpoints", "services", "pods", "namespaces"],
                        "verbs": ["list", "watch"],
                    },
                    {
                        "apiGroups": ["discovery.k8s.io"],
                        "resources": ["endpointslices"],
                        "verbs": ["list", "watch"],
                    },
                ],
            },
        ),
        (
            "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": CLUSTER_ROLE},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": CLUSTER_ROLE,
                },
                "subjects": [
                    {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": USER}
                ],
            },
        ),
        (
            f"/api/v1/namespaces/{NAMESPACE}/services",
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": meta,
                "spec": {
                    "clusterIP": DNS_SERVICE_IP,
                    "ports": [
                        {"name": name, "port": 53, "protocol": proto, "targetPort": port}
                        for name, proto in ports
                    ],
                },
            },
        ),
        (
            f"/apis/discovery.k8s.io/v1/namespaces/{NAMESPACE}/endpointslices",
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": f"{SERVICE_NAME}-host",
                    "namespace": NAMESPACE,
                    "labels": {
                        **labels,
                        "kubernetes.io/service-name": SERVICE_NAME,
                        "endpointslice.kubernetes.io/managed-by": "localcluster",
                    },
                },
                "addressType": "IPv4",
                "endpoints": [{"addresses": [node_ip], "conditions": {"ready": True}}],
                "ports": [{"name": name, "port": port, "protocol": proto} for name, proto in ports],
            },
        ),
    ]
