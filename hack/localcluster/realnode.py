"""A real node beside the control plane: every process in one table, started and stopped in order.

``COMPONENTS`` declares each of the node's processes once: the binary it runs (built by
``binaries.py``), the files it reads (pure renderers from ``nodeconfig.py`` / ``coredns.py``),
the API objects it needs, its command line and what ``up`` waits for. ``RealNode`` (a
``backend.Nodes``) prepares the host (``host.py``, with its undo journal), walks the table, and
at ``down`` walks it back and cleans up (``teardown.py``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localcluster import (
    binaries,
    certs,
    components,
    coredns,
    host,
    images,
    kubeconfig,
    process,
    teardown,
    versions,
)
from localcluster import nodeconfig as nc
from localcluster.api import ApiClient
from localcluster.backend import Log, Start
from localcluster.components import Layout
from localcluster.local import LocalCluster
from localcluster.state import State

#: Importing the server image into containerd and a first pod sandbox take a while.
TIMEOUT = 420.0
Objects = list[tuple[str, dict[str, Any]]]


@dataclass(frozen=True)
class NodeComponent:
    """One process of the real node."""

    name: str
    #: The built binary it runs (None: Debian's containerd, our relay).
    binary: str | None
    command: Callable[[Start], list[str]]
    #: Files it reads: path -> text, written before anything starts.
    files: Callable[[Start], dict[Path, str]] = lambda _: {}
    #: API objects it needs (POSTed before it starts; existing ones are kept).
    objects: Callable[[Start], Objects] = lambda _: []
    #: What ``up`` waits for once it runs, in order: (what, probe).
    ready: Callable[[Start], Sequence[tuple[str, Callable[[], bool]]]] = lambda _: ()
    #: Done once it is ready (containerd: import the images).
    after: Callable[[Start], None] = lambda _: None
    #: Logged before it starts.
    says: Callable[[], str] | None = None
    #: Its client certificate's (CN, O), and a kubeconfig with it (None: no API access).
    client: tuple[str, str | None] | None = None
    #: Stopped after every pod is removed through it (containerd).
    stop_last: bool = False


def _json(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2)  # JSON is YAML: no YAML library needed in the harness


def _bin(start: Start, name: str) -> Path:
    return start.bins[name]


def _probe(port: int, path: str = "/healthz") -> Callable[[], bool]:
    client = ApiClient(f"http://127.0.0.1:{port}")
    return lambda: client.ok(path)


def _containerd_files(s: Start) -> dict[Path, str]:
    nl = s.node_layout
    return {
        nl.containerd_config: nc.containerd_config(nl),
        nl.cni_conf_dir / f"10-{nc.CNI_NETWORK}.conflist": _json(
            nc.cni_config(nl, components.SERVICE_CIDR)
        ),
    }


def _kubelet_files(s: Start) -> dict[Path, str]:
    nl = s.node_layout
    return {
        nl.resolv_conf: "",
        nl.kubelet_config: _json(nc.kubelet_config(nl, s.node_ports, s.pki)),
    }


def _coredns_files(s: Start) -> dict[Path, str]:
    nl, ports = s.node_layout, s.node_ports
    text = coredns.corefile(
        bind=nc.NODE_IP,
        port=ports.coredns,
        health_port=ports.coredns_health,
        ready_port=ports.coredns_ready,
        kubeconfig=nl.kubeconfig("coredns"),
    )
    return {nl.corefile: text}


def _node_ready(api: ApiClient) -> bool:
    resp = api.get(f"/api/v1/nodes/{nc.NODE_NAME}")
    if resp.status != 200:
        return False
    node = resp.json()
    conds = node.get("status", {}).get("conditions", [])
    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conds)
    return ready and not node.get("spec", {}).get("taints")


def _metrics_api_available(api: ApiClient) -> bool:
    resp = api.get("/apis/apiregistration.k8s.io/v1/apiservices/v1beta1.metrics.k8s.io")
    if resp.status != 200:
        return False
    conds = resp.json().get("status", {}).get("conditions", [])
    return any(c["type"] == "Available" and c["status"] == "True" for c in conds)


def _import_images(s: Start) -> None:
    # The base image is only an input of the server image's build: pods never run it.
    wanted = [i for i in s.built if i.name != images.BASE_IMAGE]
    images.import_images("ctr", s.node_layout.containerd_sock, wanted, s.plane.log)


#: The node's processes in start order; ``down`` stops them in reverse.
COMPONENTS: tuple[NodeComponent, ...] = (
    # Pods reach the API server through the `kubernetes` Service, which points here.
    NodeComponent("apiserver-relay", None, lambda s: nc.relay_cmd(s.ports.apiserver)),
    NodeComponent(
        "containerd",
        None,
        lambda s: nc.containerd_cmd(s.node_layout),
        files=_containerd_files,
        ready=lambda s: [("containerd socket", s.node_layout.containerd_sock.exists)],
        after=_import_images,
        says=lambda: "starting containerd (Debian's) with state under the cluster root",
        stop_last=True,
    ),
    NodeComponent(
        "kubelet",
        "kubelet",
        lambda s: nc.kubelet_cmd(_bin(s, "kubelet"), s.node_layout),
        files=_kubelet_files,
        # The Node authorizer and NodeRestriction admit exactly this identity for the node.
        client=(f"system:node:{nc.NODE_NAME}", "system:nodes"),
        ready=lambda s: [
            ("kubelet /healthz", _probe(s.node_ports.kubelet_healthz)),
            (f"node {nc.NODE_NAME} Ready", lambda: _node_ready(s.api)),
        ],
        says=lambda: f"starting kubelet {versions.KUBERNETES_VERSION} as node {nc.NODE_NAME}",
    ),
    NodeComponent(
        "kube-proxy",
        "kube-proxy",
        lambda s: nc.proxy_cmd(_bin(s, "kube-proxy"), s.node_layout),
        files=lambda s: {
            s.node_layout.proxy_config: _json(nc.proxy_config(s.node_layout, s.node_ports))
        },
        ready=lambda s: [("kube-proxy /healthz", _probe(s.node_ports.proxy_healthz))],
        # Bound to the system:node-proxier ClusterRole by the default RBAC policy.
        client=("system:kube-proxy", None),
        says=lambda: (
            "starting kube-proxy (iptables mode), kube-router (NetworkPolicy), metrics-server"
        ),
    ),
    NodeComponent(
        "kube-router",
        "kube-router",
        lambda s: nc.kube_router_cmd(
            _bin(s, "kube-router"), s.node_layout, components.SERVICE_CIDR
        ),
        ready=lambda _: [("kube-router's policy chains", host.firewall_ready)],
        # Like kwok's, a harness component: it watches pods, namespaces and NetworkPolicies.
        client=("system:kube-router", "system:masters"),
    ),
    NodeComponent(
        "metrics-server",
        "metrics-server",
        lambda s: nc.metrics_server_cmd(
            _bin(s, "metrics-server"), s.node_layout, s.node_ports, s.pki
        ),
        objects=lambda s: nc.metrics_api_objects(s.node_ports.metrics_server),
        ready=lambda s: [("metrics API Available", lambda: _metrics_api_available(s.api))],
        # Reads node metrics and serves the metrics API.
        client=("system:metrics-server", "system:masters"),
    ),
    NodeComponent(
        "coredns",
        "coredns",
        lambda s: coredns.command(_bin(s, "coredns"), s.node_layout.corefile),
        files=_coredns_files,
        objects=lambda s: coredns.api_objects(node_ip=nc.NODE_IP, port=s.node_ports.coredns),
        ready=lambda s: [("CoreDNS /ready", _probe(s.node_ports.coredns_ready, "/ready"))],
        # Read-only: bound to the system:coredns ClusterRole (coredns.api_objects) alone.
        client=(coredns.USER, None),
        says=lambda: f"starting CoreDNS {versions.COREDNS_VERSION} behind {coredns.DNS_SERVICE_IP}",
    ),
)

BY_NAME = {c.name: c for c in COMPONENTS}
#: Directories the processes expect to exist (besides the parents of their files).
_DIRS = ("kubelet_dir", "pod_logs", "metrics_server_dir")
#: Client identities of the node's processes: name -> (CN, O); each gets a kubeconfig.
CLIENTS = {c.name: c.client for c in COMPONENTS if c.client is not None}


class RealNode:
    """``backend.Nodes`` with one real node, ``localcluster-node``, instead of KWOK's."""

    real_node: bool = True
    description: str = " with a real node"
    timeout: float = TIMEOUT
    with_controllers: tuple[str, ...] = ()
    processes: tuple[str, ...] = tuple(c.name for c in COMPONENTS)
    #: Besides what the processes run: crictl, which removes the pods at ``down``.
    binaries: tuple[str, ...] = tuple(
        dict.fromkeys([*(c.binary for c in COMPONENTS if c.binary), "crictl"])
    )
    label: tuple[str, str] = ("localcluster/node", "real")

    def check(self) -> None:
        host.check_host()

    def inputs(self, build_missing: bool, log: Log) -> list[images.Image]:
        return images.build_all(log) if build_missing else images.require()

    def claim(self, plane: LocalCluster) -> None:
        """Take the machine's real-node slot; first clean up after a holder that died."""
        holder = host.claim_holder()
        if holder is not None and holder != plane.root:
            stale = plane.sibling(holder)
            if not stale.is_up() and stale.has_real_node():
                plane.log(f"a real node under {holder} died: cleaning up after it")
                stale.down(keep_logs=True)
        host.claim(plane.root, lambda root: plane.sibling(root).is_up())

    def new_state(self, state: State, start: Start) -> None:
        state.versions["metrics-server"] = versions.METRICS_SERVER_VERSION
        state.versions["coredns"] = versions.COREDNS_VERSION
        state.node_ports = start.node_ports
        state.images = {i.name: str(i.archive) for i in start.built}

    def write_files(self, start: Start) -> None:
        """The node's certs, kubeconfigs and every file its processes read."""
        pki, nl = start.pki, start.node_layout
        certs.generate_node(
            pki.dir,
            node_name=nc.NODE_NAME,
            node_ips=(nc.NODE_IP, "127.0.0.1"),
            clients=CLIENTS,
        )
        for who in CLIENTS:
            kubeconfig.write_for(nl.kubeconfig(who), who, server=start.server, pki=pki, user=who)
        for name in _DIRS:
            getattr(nl, name).mkdir(parents=True, exist_ok=True)
        for component in COMPONENTS:
            for path, text in component.files(start).items():
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)

    def apiserver_flags(self, lay: Layout) -> list[str]:
        return components.real_node_apiserver_flags(lay, advertise=nc.NODE_IP)

    def command(self, name: str, start: Start) -> tuple[list[str], dict[str, str]]:
        return BY_NAME[name].command(start), nc.env()

    def after_controllers(self, start: Start) -> None:
        pass

    def start(self, start: Start) -> None:
        """Host set-up, then every component in order, each waited for."""
        plane, state = start.plane, start.state
        state.host = host.HostUndo()
        try:
            host.prepare_host(plane.log, state.host, components.SERVICE_CIDR)
        finally:
            plane.save_state(state)  # whatever was changed, `down` must be able to undo
        for component in COMPONENTS:
            if component.says is not None:
                plane.log(component.says())
            create(start.api, component.objects(start))
            start.launch(component.name)
            for what, probe in component.ready(start):
                start.wait(what, probe)
            component.after(start)

    def stop(self, plane: LocalCluster, state: State) -> list[str]:
        """Stop the node in the order that leaves nothing behind on the host.

        Its processes in reverse (so nothing restarts pods), then every pod through the CRI
        while containerd still runs, then containerd and any shim left, then kube-proxy's
        and kube-router's rules, mounts, cgroups, and the host settings.
        """
        recs = state.processes
        first = [c.name for c in reversed(COMPONENTS) if not c.stop_last and c.name in recs]
        last = [c.name for c in reversed(COMPONENTS) if c.stop_last and c.name in recs]
        stopped = process.stop([recs[n] for n in first])
        found = binaries.locate_all(["crictl", "kube-proxy"])
        if any(process.alive(recs[n]) for n in last):
            teardown.remove_pods(found.get("crictl"), plane.node_layout, plane.log)
        stopped += process.stop([recs[n] for n in last])
        teardown.kill_shims(plane.node_layout, plane.log)
        teardown.proxy_cleanup(found.get("kube-proxy"), plane.log)
        teardown.remove_router_rules(plane.log)
        unmounted = teardown.unmount_under(plane.root)
        if unmounted:
            plane.log(f"  unmounted {unmounted} leftover mounts under {plane.root}")
        teardown.remove_cgroups(plane.log)
        host.restore_host(state.host or host.HostUndo(), plane.log)
        host.release(plane.root)
        return stopped


def create(api: ApiClient, objects: Objects) -> None:
    """POST each object; one that exists already is left as it is."""
    for path, body in objects:
        resp = api.post(path, body)
        if resp.status not in (201, 409):
            raise host.NodeError(f"POST {path}: HTTP {resp.status}: {resp.body!r}")
