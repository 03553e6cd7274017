"""A real node for the local cluster: containerd, kubelet, kube-proxy, kube-router, metrics-server.

KWOK nodes make pods Ready without running them; this module runs them. Everything a real node
changes on the host is set up here (``prepare_host``) and undone at ``down`` (``restore_host``
and the cleanup functions below): a bridge with the pod network
(``10.244.0.0/24``, reachable only from this machine), two sysctls, mount propagation of ``/``,
an iptables guard that keeps pod traffic on the bridge, cgroups and mounts. What was changed is
recorded in the cluster's ``state.json`` so ``down`` restores exactly that, even from another
process.

Needs root, cgroup v1 or v2, and Debian's ``containerd``, ``runc`` and
``containernetworking-plugins``. Only one real node can run per machine (one bridge, one
``/kubepods`` cgroup); ``claim`` enforces that.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from localcluster import certs, coredns, images
from localcluster.api import ApiClient

Log = Callable[[str], None]

NODE_NAME = "localcluster-node"
BRIDGE = "lcbr0"
POD_CIDR = "10.244.0.0/24"
#: The bridge's address: the pods' gateway, the node's InternalIP, where host servers listen.
NODE_IP = "10.244.0.1"
CNI_NETWORK = "localcluster"
GUARD_CHAIN = "LOCALCLUSTER-GUARD"
CNI_BIN_DIR = Path("/usr/lib/cni")
CLAIM_FILE = Path("/run/localcluster/real-node.json")
CGROUP_ROOT = Path("/sys/fs/cgroup")
#: Writing these is global; ``restore_host`` puts the old values back.
SYSCTLS = {
    "net/ipv4/ip_forward": "1",  # pod -> Service IP -> pod is routed through the host
    "net/bridge/bridge-nf-call-iptables": "1",  # kube-proxy's DNAT must see bridged packets
}
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
HOST_TOOLS = {
    "containerd": "containerd",
    "containerd-shim-runc-v2": "containerd",
    "runc": "runc",
    "ctr": "containerd",
    "ip": "iproute2",
    "iptables": "iptables",
    "ipset": "ipset",
    "mount": "mount",
    "tar": "tar",
}


#: Debian packages for running the node and building its images (``python -m localcluster
#: deps`` installs the missing ones).
DEBIAN_PACKAGES = (
    "containerd",
    "runc",
    "containernetworking-plugins",
    "iptables",
    "ipset",
    "conntrack",
    "iproute2",
    "buildah",
    "debootstrap",
    "gcc",
    "libc6-dev",
)


class NodeError(RuntimeError):
    """The host cannot run a real node, or setting it up failed."""


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


def _sh(argv: Sequence[str], *, check: bool = True, timeout: float = 30) -> str:
    """A host command with a deadline; NodeError with its stderr when it fails."""
    try:
        proc = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as err:
        raise NodeError(f"`{' '.join(argv)}` timed out after {timeout:.0f}s") from err
    if check and proc.returncode != 0:
        raise NodeError(f"`{' '.join(argv)}` exited {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


# -- checks and the one-node-per-machine claim ----------------------------------------------


def check_host() -> None:
    """Fail early, with the fix, when this machine cannot run the node."""
    if os.geteuid() != 0:
        raise NodeError("a real node needs root (containerd, cgroups, a bridge, iptables)")
    missing = sorted({pkg for tool, pkg in HOST_TOOLS.items() if shutil.which(tool) is None})
    if not (CNI_BIN_DIR / "bridge").is_file():
        missing.append("containernetworking-plugins")
    if missing:
        raise NodeError(
            f"missing packages for a real node: apt-get install -y {' '.join(sorted(missing))} "
            "(or `python -m localcluster deps`)"
        )
    if not Path("/proc/sys/net/bridge").is_dir():
        raise NodeError("the kernel has no br_netfilter (/proc/sys/net/bridge): modprobe it")


def missing_packages() -> list[str]:
    """The DEBIAN_PACKAGES that dpkg does not list as installed."""
    missing = []
    for package in DEBIAN_PACKAGES:
        status = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", package],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        ).stdout
        if "install ok installed" not in status:
            missing.append(package)
    return missing


def install_packages(log: Log) -> list[str]:
    """apt-get install what is missing (bounded in time); returns what was installed."""
    missing = missing_packages()
    if not missing:
        log("all Debian packages of the real node are installed")
        return []
    if os.geteuid() != 0:
        raise NodeError(f"installing {' '.join(missing)} needs root")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    log(f"apt-get install -y {' '.join(missing)}")
    for argv, timeout in (
        (["apt-get", "update"], 300),
        (["apt-get", "install", "-y", *missing], 900),
    ):
        proc = subprocess.run(
            argv, capture_output=True, text=True, env=env, timeout=timeout, check=False
        )
        if proc.returncode != 0:
            raise NodeError(f"`{' '.join(argv)}` exited {proc.returncode}: {proc.stderr[-2000:]}")
    return missing


def claim_holder() -> Path | None:
    """The root of the cluster that last took the real-node slot, if any."""
    try:
        return Path(json.loads(CLAIM_FILE.read_text())["root"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return None


def claim(root: Path, is_running: Callable[[Path], bool]) -> None:
    """Take the machine's single real-node slot, or explain who holds it."""
    holder = claim_holder()
    if holder is not None and holder != root and is_running(holder):
        raise NodeError(
            f"another real node is running (cluster under {holder}); "
            f"`python -m localcluster --root {holder} down` first"
        )
    CLAIM_FILE.parent.mkdir(parents=True, exist_ok=True)
    CLAIM_FILE.write_text(json.dumps({"root": str(root), "pid": os.getpid()}))


def release(root: Path) -> None:
    with contextlib.suppress(FileNotFoundError, json.JSONDecodeError, KeyError):
        if Path(json.loads(CLAIM_FILE.read_text())["root"]) == root:
            CLAIM_FILE.unlink()


# -- host set-up and teardown ---------------------------------------------------------------


def _propagation(target: str = "/") -> str:
    out = _sh(["findmnt", "-n", "-o", "PROPAGATION", target], check=False).strip()
    return out or "unknown"


def _iptables_has(*rule: str, table: str = "filter") -> bool:
    return (
        subprocess.run(
            ["iptables", "-w", "5", "-t", table, "-C", *rule],
            capture_output=True,
            check=False,
            timeout=30,
        ).returncode
        == 0
    )


def prepare_host(log: Log, undo: dict[str, Any], service_cidr: str) -> None:
    """Bridge, sysctls, shared mounts, iptables guard; records in ``undo`` what to revert.

    ``undo`` is filled step by step, so after a failure halfway it still says what to revert.
    """
    undo.update({"sysctls": {}, "propagation": None, "bridge": False, "guard": False})
    # The kubelet needs mount propagation (volumes, mountPropagation); `/` is private here.
    before = _propagation("/")
    if "shared" not in before:
        _sh(["mount", "--make-rshared", "/"])
        undo["propagation"] = before
    for key, value in SYSCTLS.items():
        path = Path("/proc/sys") / key
        old = path.read_text().strip()
        if old != value:
            path.write_text(value)
            undo["sysctls"][key] = old
    if not Path(f"/sys/class/net/{BRIDGE}").exists():
        _sh(["ip", "link", "add", BRIDGE, "type", "bridge"])
    undo["bridge"] = True  # the name is ours alone: one left by a crashed run goes too
    _sh(["ip", "addr", "replace", f"{NODE_IP}/24", "dev", BRIDGE])
    _sh(["ip", "link", "set", BRIDGE, "up"])
    # Host -> ClusterIP leaves through the bridge, never eth0, even before kube-proxy's DNAT.
    _sh(["ip", "route", "replace", service_cidr, "dev", BRIDGE, "src", NODE_IP])
    # Forwarding is on, so keep pod traffic on the bridge: nothing in or out of other links.
    _sh(["iptables", "-w", "5", "-N", GUARD_CHAIN], check=False)
    _sh(["iptables", "-w", "5", "-F", GUARD_CHAIN])
    _sh(["iptables", "-w", "5", "-A", GUARD_CHAIN, "-i", BRIDGE, "!", "-o", BRIDGE, "-j", "DROP"])
    _sh(["iptables", "-w", "5", "-A", GUARD_CHAIN, "!", "-i", BRIDGE, "-o", BRIDGE, "-j", "DROP"])
    if not _iptables_has("FORWARD", "-j", GUARD_CHAIN):
        _sh(["iptables", "-w", "5", "-I", "FORWARD", "1", "-j", GUARD_CHAIN])
    undo["guard"] = True
    log(f"  host: bridge {BRIDGE} {NODE_IP}/24, forwarding kept on the bridge, / rshared")


def _remove_chain(table: str, chain: str, parents: Sequence[str]) -> None:
    for parent in parents:
        while _iptables_has(parent, "-j", chain, table=table):
            _sh(["iptables", "-w", "5", "-t", table, "-D", parent, "-j", chain], check=False)
    _sh(["iptables", "-w", "5", "-t", table, "-F", chain], check=False)
    _sh(["iptables", "-w", "5", "-t", table, "-X", chain], check=False)


#: Chains the kubelet creates itself (kube-proxy's are removed by ``kube-proxy --cleanup``).
_KUBELET_CHAINS = {
    "mangle": ("KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY"),
    "nat": ("KUBE-KUBELET-CANARY",),
    "filter": ("KUBE-FIREWALL", "KUBE-KUBELET-CANARY"),
}


def restore_host(undo: Mapping[str, Any], log: Log) -> None:
    """Undo ``prepare_host`` (and the kubelet's own chains); safe to call twice."""
    if undo.get("guard"):
        _remove_chain("filter", GUARD_CHAIN, ["FORWARD"])
    for table, chains in _KUBELET_CHAINS.items():
        for chain in chains:
            _remove_chain(table, chain, ["INPUT", "OUTPUT", "FORWARD", "PREROUTING"])
    if undo.get("bridge") and Path(f"/sys/class/net/{BRIDGE}").exists():
        _sh(["ip", "link", "del", BRIDGE], check=False)
    for key, old in (undo.get("sysctls") or {}).items():
        with contextlib.suppress(OSError):
            (Path("/proc/sys") / key).write_text(str(old))
    if undo.get("propagation") and "private" in str(undo["propagation"]):
        _sh(["mount", "--make-rprivate", "/"], check=False)
    log("  host: bridge, sysctls, iptables guard and mount propagation restored")


def remove_cgroups(log: Log) -> None:
    """Remove the ``kubepods`` cgroup trees the kubelet made (they are empty once pods are)."""
    removed = 0
    # v1: one tree per controller (/sys/fs/cgroup/<controller>/kubepods); v2: one tree.
    tops = [base / "kubepods" for base in CGROUP_ROOT.iterdir() if base.is_dir()]
    tops.append(CGROUP_ROOT / "kubepods")
    for top in tops:
        if not top.is_dir() or top.is_symlink():
            continue
        dirs = sorted((Path(d) for d, _, _ in os.walk(top)), key=lambda d: len(d.parts))
        for cgroup in reversed(dirs):  # children before parents
            with contextlib.suppress(OSError):
                cgroup.rmdir()
                removed += 1
    if removed:
        log(f"  removed {removed} pod cgroups")


def unmount_under(path: Path) -> int:
    """Lazy-unmount everything below ``path`` (volumes, rootfs, netns, shm), deepest first."""
    return len(images.unmount_under(path))


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


def write_configs(lay: NodeLayout, ports: NodePorts, pki: certs.Pki, service_cidr: str) -> None:
    """Every file the node's processes read, under the cluster root."""
    lay.containerd.mkdir(parents=True, exist_ok=True)
    lay.containerd_config.write_text(containerd_config(lay))
    lay.cni_conf_dir.mkdir(parents=True, exist_ok=True)
    (lay.cni_conf_dir / f"10-{CNI_NETWORK}.conflist").write_text(
        json.dumps(cni_config(lay, service_cidr), indent=2)
    )
    lay.kubelet_dir.mkdir(parents=True, exist_ok=True)
    lay.pod_logs.mkdir(parents=True, exist_ok=True)
    lay.resolv_conf.write_text("")
    # JSON is YAML: no YAML library needed in the harness.
    lay.kubelet_config.write_text(json.dumps(kubelet_config(lay, ports, pki), indent=2))
    lay.proxy_config.write_text(json.dumps(proxy_config(lay, ports), indent=2))
    lay.metrics_server_dir.mkdir(parents=True, exist_ok=True)
    lay.corefile.parent.mkdir(parents=True, exist_ok=True)
    lay.corefile.write_text(
        coredns.corefile(
            bind=NODE_IP,
            port=ports.coredns,
            health_port=ports.coredns_health,
            ready_port=ports.coredns_ready,
            kubeconfig=lay.kubeconfig("coredns"),
        )
    )


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


def firewall_ready() -> bool:
    """kube-router has installed its filter chains (its first full sync is done)."""
    return (
        subprocess.run(
            ["iptables", "-w", "5", "-S", "KUBE-ROUTER-FORWARD"],
            capture_output=True,
            check=False,
            timeout=30,
        ).returncode
        == 0
    )


#: What kube-router's policy controller creates: chain and ipset name prefixes.
_ROUTER_CHAINS = ("KUBE-ROUTER-", "KUBE-NWPLCY-", "KUBE-POD-FW-")
_ROUTER_IPSETS = ("KUBE-SRC-", "KUBE-DST-", "kube-router-", "TMP-")


def remove_router_rules(log: Log) -> None:
    """Remove kube-router's chains, the jumps to them, and its ipsets.

    ``kube-router --cleanup-config`` v2.1.0 panics on a kernel without IPVS before it is
    done, so this does the same by name: only kube-router uses these prefixes.
    """
    removed = 0
    for table in ("filter", "nat", "mangle"):
        rules = _sh(["iptables", "-w", "5", "-t", table, "-S"], check=False).splitlines()
        ours = {
            line.split()[1]
            for line in rules
            if line.startswith("-N ") and line.split()[1].startswith(_ROUTER_CHAINS)
        }
        if not ours:
            continue
        for line in rules:
            parts = shlex.split(line)
            jumps_to_ours = "-j" in parts and parts[parts.index("-j") + 1] in ours
            if parts[:1] == ["-A"] and parts[1] not in ours and jumps_to_ours:
                _sh(["iptables", "-w", "5", "-t", table, "-D", *parts[1:]], check=False)
        for chain in ours:
            _sh(["iptables", "-w", "5", "-t", table, "-F", chain], check=False)
        for chain in ours:
            _sh(["iptables", "-w", "5", "-t", table, "-X", chain], check=False)
        removed += len(ours)
    if shutil.which("ipset"):
        for name in _sh(["ipset", "list", "-n"], check=False).split():
            if name.startswith(_ROUTER_IPSETS):
                _sh(["ipset", "destroy", name], check=False)
    if removed:
        log(f"  removed kube-router's {removed} iptables chains and its ipsets")


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


# -- the metrics API ------------------------------------------------------------------------


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


def register_metrics_api(api: ApiClient, port: int) -> None:
    create(api, metrics_api_objects(port))


def register_dns(api: ApiClient, port: int) -> None:
    """CoreDNS's RBAC, the kube-dns Service and its EndpointSlice (the host process)."""
    create(api, coredns.api_objects(node_ip=NODE_IP, port=port))


def create(api: ApiClient, objects: Sequence[tuple[str, dict[str, Any]]]) -> None:
    """POST each object; one that exists already is left as it is."""
    for path, body in objects:
        resp = api.post(path, body)
        if resp.status not in (201, 409):
            raise NodeError(f"POST {path}: HTTP {resp.status}: {resp.body!r}")


def metrics_api_available(api: ApiClient) -> bool:
    resp = api.get("/apis/apiregistration.k8s.io/v1/apiservices/v1beta1.metrics.k8s.io")
    if resp.status != 200:
        return False
    conds = resp.json().get("status", {}).get("conditions", [])
    return any(c["type"] == "Available" and c["status"] == "True" for c in conds)


def node_ready(api: ApiClient) -> bool:
    resp = api.get(f"/api/v1/nodes/{NODE_NAME}")
    if resp.status != 200:
        return False
    node = resp.json()
    conds = node.get("status", {}).get("conditions", [])
    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conds)
    return ready and not node.get("spec", {}).get("taints")


# -- stopping pods and leftovers ------------------------------------------------------------


def remove_pods(crictl: Path | None, lay: NodeLayout, log: Log, timeout: float = 60) -> None:
    """Stop and remove every pod through the CRI: CNI DEL, netns and mounts go properly."""
    if crictl is None or not lay.containerd_sock.exists():
        return
    endpoint = f"unix://{lay.containerd_sock}"
    base = [str(crictl), f"--runtime-endpoint={endpoint}", f"--image-endpoint={endpoint}"]
    base += ["--timeout=20s"]
    try:
        proc = subprocess.run(
            [*base, "rmp", "--all", "--force"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        log(f"  crictl rmp timed out after {timeout:.0f}s; killing what is left")
        return
    removed = proc.stdout.count("Removed sandbox")
    if removed:
        log(f"  removed {removed} pod sandboxes through the CRI")
    if proc.returncode != 0 and proc.stderr.strip():
        log(f"  crictl rmp: {proc.stderr.strip()[-500:]}")


def kill_shims(lay: NodeLayout, log: Log) -> None:
    """SIGKILL the containerd shims (and so their containers) that belong to our containerd.

    Shims outlive containerd by design; ours are recognised by the address of our socket on
    their command line, so no other containerd's shims are touched.
    """
    address = str(lay.containerd_sock)
    shims = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmd = proc.info.get("cmdline") or []
        if cmd and "containerd-shim" in cmd[0] and address in cmd:
            shims.append(proc)
    for shim in shims:
        with contextlib.suppress(psutil.NoSuchProcess):
            for child in shim.children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
            shim.kill()
    psutil.wait_procs(shims, timeout=10)
    if shims:
        log(f"  killed {len(shims)} leftover containerd shims")


def proxy_cleanup(binary: Path | None, log: Log) -> None:
    """``kube-proxy --cleanup`` removes every KUBE-* rule and chain kube-proxy made."""
    if binary is None:
        return
    try:
        subprocess.run(
            [str(binary), "--cleanup", "--v=0"],
            capture_output=True,
            timeout=60,
            check=False,
            env=env(),
        )
    except subprocess.TimeoutExpired:
        log("  kube-proxy --cleanup timed out")
