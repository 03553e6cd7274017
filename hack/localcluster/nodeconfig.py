"""The real node's configuration: pure renderers of its files, command lines and API objects.

Nothing here touches the host or the API: ``realnode.py`` writes these files, starts these
commands and sends these objects; ``host.py`` changes the host; ``teardown.py`` cleans up.
Unit-tested in ``tests/e2e/test_node_config.py`` (no root, no binaries).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from localcluster import certs, coredns, images

NODE_NAME = "localcluster-node"
BRIDGE = "lcbr0"
POD_CIDR = "10.244.0.0/24"
#: The bridge's address: the pods' gateway, the node's InternalIP, where host servers listen.
NODE_IP = "10.244.0.1"
CNI_NETWORK = "localcluster"
CNI_BIN_DIR = Path("/usr/lib/cni")
#: Order of the node's processes; ``down`` stops them in reverse (kubelet before containerd).
ORDER = (
    "containerd",
    "kubelet",
    "kube-proxy",
    "kube-router",
    "metrics-server",
    "coredns",
    "apiserver-relay",
)


@dataclass(frozen=True)
class NodePorts:
    kubelet: int
    kubelet_healthz: int
    proxy_healthz: int
    proxy_metrics: int
    metrics_server: int
    coredns: int
    coredns_health: int
    coredns_ready: int

    def to_json(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class NodeLayout:
    """Paths of the node's state under the cluster root."""

    root: Path

    @property
    def containerd(self) -> Path:
        return self.root / "containerd"

    @property
    def containerd_config(self) -> Path:
        return self.containerd / "config.toml"

    @property
    def containerd_sock(self) -> Path:
        return self.containerd / "containerd.sock"

    @property
    def cni_conf_dir(self) -> Path:
        return self.root / "cni" / "net.d"

    @property
    def cni_ipam_dir(self) -> Path:
        return self.root / "cni" / "ipam"

    @property
    def kubelet_dir(self) -> Path:
        return self.root / "kubelet"

    @property
    def kubelet_config(self) -> Path:
        return self.root / "kubelet.yaml"

    @property
    def pod_logs(self) -> Path:
        return self.root / "pod-logs"

    @property
    def resolv_conf(self) -> Path:
        return self.root / "resolv.conf"

    @property
    def proxy_config(self) -> Path:
        return self.root / "kube-proxy.yaml"

    @property
    def metrics_server_dir(self) -> Path:
        return self.root / "metrics-server"

    @property
    def corefile(self) -> Path:
        return self.root / "coredns" / "Corefile"

    def kubeconfig(self, who: str) -> Path:
        return self.root / "kubeconfigs" / f"{who}.kubeconfig"


# -- configuration files --------------------------------------------------------------------


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def containerd_config(lay: NodeLayout) -> str:
    c = lay.containerd
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""# Written by localcluster: containerd for the local cluster's real node.
version = 2
root = {_toml_str(str(c / "root"))}
state = {_toml_str(str(c / "state"))}
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = {_toml_str(str(lay.containerd_sock))}

[debug]
  level = "info"

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = {_toml_str(str(c / "opt"))}
  [{cri}]
    sandbox_image = {_toml_str(images.PAUSE_IMAGE)}
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    disable_apparmor = true
    # Root here may lack CAP_SYS_RESOURCE (a sandboxed VM): runc then cannot set the negative
    # OOM scores the kubelet asks for (-998 for sandboxes), and every pod fails to start.
    # Clamping them to containerd's own score works everywhere.
    restrict_oom_score_adj = true
    # Network namespaces under our state dir, so `down` finds every leftover mount.
    netns_mounts_under_state_dir = true
    [{cri}.containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"
      [{cri}.containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [{cri}.containerd.runtimes.runc.options]
          Root = {_toml_str(str(c / "runc"))}
          SystemdCgroup = false
    [{cri}.cni]
      bin_dir = {_toml_str(str(CNI_BIN_DIR))}
      conf_dir = {_toml_str(str(lay.cni_conf_dir))}
      max_conf_num = 1
"""


def cni_config(lay: NodeLayout, service_cidr: str) -> dict[str, Any]:
    """A bridge network on this machine only: pods get routes to each other and to Services.

    No default route and no masquerading: a pod can reach other pods, Service IPs and the
    node's bridge address, and nothing beyond this machine.
    """
    return {
        "cniVersion": "0.4.0",
        "name": CNI_NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_CIDR, "gateway": NODE_IP}]],
                    "routes": [{"dst": service_cidr}],
                    "dataDir": str(lay.cni_ipam_dir),
                },
            }
        ],
    }


def kubelet_config(lay: NodeLayout, ports: NodePorts, pki: certs.Pki) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": NODE_IP,
        "port": ports.kubelet,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": ports.kubelet_healthz,
        "tlsCertFile": str(pki.kubelet_serving_cert),
        "tlsPrivateKeyFile": str(pki.kubelet_serving_key),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(pki.ca_cert)},
        },
        "authorization": {"mode": "Webhook"},
        # cgroup v1 without systemd as init here: plain cgroupfs, and allow v1 on 1.34.
        "cgroupDriver": "cgroupfs",
        "failCgroupV1": False,
        "containerRuntimeEndpoint": f"unix://{lay.containerd_sock}",
        "imageServiceEndpoint": f"unix://{lay.containerd_sock}",
        # CoreDNS behind the kube-dns Service: pods get it, the cluster search domains and
        # ndots:5 in resolv.conf. The host's own resolv.conf is not for pods (no route out):
        # an empty file adds no upstream servers or search domains.
        "clusterDNS": [coredns.DNS_SERVICE_IP],
        "clusterDomain": coredns.CLUSTER_DOMAIN,
        "resolvConf": str(lay.resolv_conf),
        "podLogsDir": str(lay.pod_logs),
        "volumePluginDir": str(lay.kubelet_dir / "volume-plugins"),
        # Imported images cannot be pulled again: never garbage-collect them.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
            "nodefs.inodesFree": "1%",
        },
        "failSwapOn": False,
        # Not -999: without CAP_SYS_RESOURCE the kubelet cannot lower its own OOM score.
        "oomScoreAdj": 0,
        "serializeImagePulls": False,
        "maxPods": 110,
        "nodeStatusUpdateFrequency": "5s",
        "syncFrequency": "10s",
        "cgroupsPerQOS": True,
        "enforceNodeAllocatable": ["pods"],
        "shutdownGracePeriod": "0s",
        "containerLogMaxSize": "10Mi",
    }


def proxy_config(lay: NodeLayout, ports: NodePorts) -> dict[str, Any]:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(lay.kubeconfig("kube-proxy"))},
        "hostnameOverride": NODE_NAME,
        "mode": "iptables",
        "clusterCIDR": POD_CIDR,
        "bindAddress": NODE_IP,
        "healthzBindAddress": f"127.0.0.1:{ports.proxy_healthz}",
        "metricsBindAddress": f"127.0.0.1:{ports.proxy_metrics}",
        # NodePorts only on the bridge address, never on eth0 or 127.0.0.1 (route_localnet).
        "nodePortAddresses": [f"{NODE_IP}/32"],
        "iptables": {"localhostNodePorts": False, "syncPeriod": "10s", "minSyncPeriod": "0s"},
        # Leave the host's conntrack sysctls alone.
        "conntrack": {"maxPerCore": 0, "min": 0},
        "detectLocalMode": "ClusterCIDR",
    }


# -- command lines --------------------------------------------------------------------------


def containerd_cmd(lay: NodeLayout) -> list[str]:
    return [shutil.which("containerd") or "containerd", f"--config={lay.containerd_config}"]


def kubelet_cmd(binary: Path, lay: NodeLayout) -> list[str]:
    return [
        str(binary),
        f"--config={lay.kubelet_config}",
        f"--kubeconfig={lay.kubeconfig('kubelet')}",
        f"--root-dir={lay.kubelet_dir}",
        f"--cert-dir={lay.kubelet_dir / 'pki'}",
        f"--hostname-override={NODE_NAME}",
        f"--node-ip={NODE_IP}",
        "--node-labels=type=real,localcluster/node=real",
        "--v=1",
    ]


def proxy_cmd(binary: Path, lay: NodeLayout) -> list[str]:
    return [str(binary), f"--config={lay.proxy_config}", "--v=1"]


def kube_router_cmd(binary: Path, lay: NodeLayout, service_cidr: str) -> list[str]:
    """kube-router as a NetworkPolicy controller only; kube-proxy and our CNI do the rest."""
    return [
        str(binary),
        f"--kubeconfig={lay.kubeconfig('kube-router')}",
        "--run-firewall=true",
        "--run-router=false",
        "--run-service-proxy=false",
        "--enable-cni=false",
        "--enable-ipv6=false",
        "--enable-pod-egress=false",
        f"--hostname-override={NODE_NAME}",
        f"--service-cluster-ip-range={service_cidr}",
        # No listening ports at all: its health and metrics servers bind every address.
        "--health-port=0",
        "--metrics-port=0",
        "--iptables-sync-period=30s",
        "--v=1",
    ]


def relay_cmd(apiserver_port: int) -> list[str]:
    """The relay from the bridge IP to the API server on 127.0.0.1 (localcluster.relay)."""
    return [
        sys.executable,
        "-m",
        "localcluster.relay",
        f"{NODE_IP}:{apiserver_port}",
        f"127.0.0.1:{apiserver_port}",
    ]


def metrics_server_cmd(
    binary: Path, lay: NodeLayout, ports: NodePorts, pki: certs.Pki
) -> list[str]:
    kubeconfig = lay.kubeconfig("metrics-server")
    return [
        str(binary),
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        f"--bind-address={NODE_IP}",
        f"--secure-port={ports.metrics_server}",
        f"--cert-dir={lay.metrics_server_dir}",
        f"--kubelet-certificate-authority={pki.ca_cert}",
        "--kubelet-preferred-address-types=InternalIP",
        "--kubelet-use-node-status-port",
        # The shortest resolution metrics-server allows (it must exceed the request
        # timeout): the HPA sees load within ~15 s.
        "--metric-resolution=10s",
        "--kubelet-request-timeout=5s",
        "--v=1",
    ]


def coredns_cmd(binary: Path, lay: NodeLayout) -> list[str]:
    return coredns.command(binary, lay.corefile)


def env() -> dict[str, str]:
    """PATH with /usr/sbin (runc, iptables, mount) for the node's processes."""
    path = os.environ.get("PATH", "")
    extra = [d for d in ("/usr/local/sbin", "/usr/sbin", "/sbin") if d not in path.split(":")]
    return dict(os.environ, PATH=":".join([path, *extra]) if path else ":".join(extra))


# -- API objects ----------------------------------------------------------------------------


def metrics_api_objects(port: int) -> list[tuple[str, dict[str, Any]]]:
    """Service + Endpoints pointing at metrics-server on the node IP, and the APIService.

    The apiserver runs with --enable-aggregator-routing, so it dials the endpoint directly.
    """
    meta = {"name": "metrics-server", "namespace": "kube-system"}
    return [
        (
            "/api/v1/namespaces/kube-system/services",
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": meta,
                "spec": {"ports": [{"name": "https", "port": 443, "targetPort": port}]},
            },
        ),
        (
            "/api/v1/namespaces/kube-system/endpoints",
            {
                "apiVersion": "v1",
                "kind": "Endpoints",
                "metadata": meta,
                "subsets": [
                    {
                        "addresses": [{"ip": NODE_IP}],
                        "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
                    }
                ],
            },
        ),
        (
            "/apis/apiregistration.k8s.io/v1/apiservices",
            {
                "apiVersion": "apiregistration.k8s.io/v1",
                "kind": "APIService",
                "metadata": {"name": "v1beta1.metrics.k8s.io"},
                "spec": {
                    "service": {"name": "metrics-server", "namespace": "kube-system", "port": 443},
                    "group": "metrics.k8s.io",
                    "version": "v1beta1",
                    # metrics-server serves a self-signed cert it makes at start.
                    "insecureSkipTLSVerify": True,
                    "groupPriorityMinimum": 100,
                    "versionPriority": 100,
                },
            },
        ),
    ]
