"""Command lines of the control-plane components, and where each keeps its files.

Everything listens on 127.0.0.1 on ports picked at ``up`` time, so several clusters (a
developer's ``make cluster-up`` and a test session, or two CI jobs) run side by side.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

from localcluster import certs

#: Start order; ``down`` stops them in reverse.
CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
ORDER = (*CONTROL_PLANE, "kwok")

SERVICE_CIDR = "10.0.0.0/20"  # 4094 Services: room for the 500-resource benchmark
SERVICE_IP = "10.0.0.1"  # first IP of SERVICE_CIDR: the `kubernetes` Service
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"


@dataclass(frozen=True)
class Ports:
    etcd_client: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int
    kwok: int

    def to_json(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class Layout:
    """Paths under a cluster's root directory (``.cluster/`` for ``make cluster-up``)."""

    root: Path

    @property
    def marker(self) -> Path:
        # Its presence proves the directory is ours before `down` deletes anything.
        return self.root / ".localcluster"

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def etcd_data(self) -> Path:
        return self.root / "etcd"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    @property
    def kwok_dir(self) -> Path:
        return self.root / "kwok"

    @property
    def kwok_config(self) -> Path:
        return self.kwok_dir / "kwok.yaml"

    def component_kubeconfig(self, who: str) -> Path:
        return self.root / "kubeconfigs" / f"{who}.kubeconfig"

    def cert_dir(self, component: str) -> Path:
        # Where the controller-manager and scheduler keep their self-signed serving certs.
        return self.root / "serving" / component

    def log(self, component: str) -> Path:
        return self.logs / f"{component}.log"


def etcd(binary: Path, lay: Layout, ports: Ports) -> list[str]:
    client = f"http://127.0.0.1:{ports.etcd_client}"
    peer = f"http://127.0.0.1:{ports.etcd_peer}"
    return [
        str(binary),
        "--name=localcluster",
        f"--data-dir={lay.etcd_data}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=localcluster={peer}",
        "--initial-cluster-state=new",
        # Throwaway data: skipping fsync makes writes (and so the whole cluster) much faster.
        "--unsafe-no-fsync=true",
        "--quota-backend-bytes=4294967296",
        "--log-level=warn",
    ]


def kube_apiserver(binary: Path, lay: Layout, ports: Ports) -> list[str]:
    pki = certs.Pki(lay.pki)
    return [
        str(binary),
        f"--etcd-servers=http://127.0.0.1:{ports.etcd_client}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--secure-port={ports.apiserver}",
        f"--tls-cert-file={pki.serving_cert}",
        f"--tls-private-key-file={pki.serving_key}",
        f"--client-ca-file={pki.ca_cert}",
        f"--service-account-issuer={SA_ISSUER}",
        f"--service-account-key-file={pki.sa_pub}",
        f"--service-account-signing-key-file={pki.sa_key}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        f"--requestheader-client-ca-file={pki.front_proxy_ca_cert}",
        f"--requestheader-allowed-names={certs.FRONT_PROXY_CLIENT}",
        "--requestheader-username-headers=X-Remote-User",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        f"--proxy-client-cert-file={pki.front_proxy_client_cert}",
        f"--proxy-client-key-file={pki.front_proxy_client_key}",
        "--authorization-mode=Node,RBAC",
        "--enable-admission-plugins=NodeRestriction",
        # Nothing could route to 127.0.0.1 from a pod anyway, and the default reconciler
        # would keep rewriting the `kubernetes` Endpoints with it.
        "--endpoint-reconciler-type=none",
        "--allow-privileged=true",
        # LOCALCLUSTER_PROFILING=1: /debug/pprof for admins (`kubectl get --raw
        # "/debug/pprof/profile?seconds=30"`), to see where the API server's CPU goes.
        f"--profiling={'true' if os.environ.get(PROFILING_ENV) == '1' else 'false'}",
        f"--cert-dir={lay.root / 'serving' / 'kube-apiserver'}",
        "--v=1",
    ]


# Client rate limits of the controller-manager and scheduler (their defaults, 20 QPS / 30
# burst, pace any test that creates hundreds of objects): LOCALCLUSTER_KUBE_API_QPS=200 raises
# both QPS and burst (burst = 2 x QPS) for the operator benchmark at scale.
QPS_ENV = "LOCALCLUSTER_KUBE_API_QPS"
PROFILING_ENV = "LOCALCLUSTER_PROFILING"


def _client_rate_flags() -> list[str]:
    qps = os.environ.get(QPS_ENV, "").strip()
    if not qps:
        return []
    return [f"--kube-api-qps={int(qps)}", f"--kube-api-burst={2 * int(qps)}"]


def _common_controller_flags(lay: Layout, who: str, port: int) -> list[str]:
    kubeconfig = lay.component_kubeconfig(who)
    return [
        *_client_rate_flags(),
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--leader-elect=false",
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        f"--cert-dir={lay.cert_dir(who)}",
        "--v=1",
    ]


def kube_controller_manager(binary: Path, lay: Layout, ports: Ports) -> list[str]:
    pki = certs.Pki(lay.pki)
    return [
        str(binary),
        *_common_controller_flags(lay, "controller-manager", ports.controller_manager),
        # All default controllers: deployment, replicaset, garbage-collector,
        # horizontal-pod-autoscaler, disruption, serviceaccount(-token), namespace, ...
        "--controllers=*",
        "--use-service-account-credentials=true",
        f"--root-ca-file={pki.ca_cert}",
        f"--service-account-private-key-file={pki.sa_key}",
        f"--cluster-signing-cert-file={pki.ca_cert}",
        f"--cluster-signing-key-file={pki.ca_key}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        # Tests wait for HPA decisions; the default 15 s sync makes them slow.
        "--horizontal-pod-autoscaler-sync-period=5s",
        "--horizontal-pod-autoscaler-downscale-stabilization=30s",
    ]


def kube_scheduler(binary: Path, lay: Layout, ports: Ports) -> list[str]:
    return [str(binary), *_common_controller_flags(lay, "scheduler", ports.scheduler)]


def kwok(binary: Path, lay: Layout, ports: Ports) -> list[str]:
    # Manage-* options, node IP, pod CIDR and server address are in the --config file.
    return [
        str(binary),
        f"--kubeconfig={lay.component_kubeconfig('kwok')}",
        f"--config={lay.kwok_config}",
    ]


def real_node_apiserver_flags(lay: Layout, *, advertise: str) -> list[str]:
    """Extra apiserver flags when a real kubelet is there (KWOK needs none of them).

    The apiserver authenticates to kubelets (logs, exec) and verifies their serving certs;
    aggregated APIs (metrics-server) are dialled at their endpoint IP, not through kube-proxy.
    It advertises ``advertise`` (the node's bridge IP, where a relay passes connections on to
    127.0.0.1) as the endpoint of the ``kubernetes`` Service, so pods reach it in-cluster.
    These replace the flags of the same name in ``kube_apiserver``.
    """
    pki = certs.Pki(lay.pki)
    return [
        f"--advertise-address={advertise}",
        "--endpoint-reconciler-type=lease",
        f"--kubelet-client-certificate={pki.client_cert('apiserver-kubelet-client')}",
        f"--kubelet-client-key={pki.client_key('apiserver-kubelet-client')}",
        f"--kubelet-certificate-authority={pki.ca_cert}",
        "--kubelet-preferred-address-types=InternalIP",
        "--enable-aggregator-routing=true",
    ]
