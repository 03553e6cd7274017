"""KWOK's fake nodes: pods of Deployments are scheduled for real and marked Running/Ready
by KWOK's stages, without containers. The default kind of node, and CI's."""

from __future__ import annotations

import os

from localcluster import components, images, kwokconfig, versions
from localcluster.api import ApiClient
from localcluster.backend import Log, Start
from localcluster.components import Layout
from localcluster.errors import ClusterError
from localcluster.local import LocalCluster, nodes_ready
from localcluster.state import State

NODE_NAMES = ("kwok-node-0", "kwok-node-1")
DEFAULT_TIMEOUT = 180.0


class KwokNodes:
    """``backend.Nodes`` with the KWOK controller and two fake nodes."""

    real_node: bool = False
    description: str = ""
    timeout: float = DEFAULT_TIMEOUT
    with_controllers: tuple[str, ...] = ("kwok",)
    processes: tuple[str, ...] = ("kwok",)
    binaries: tuple[str, ...] = ("kwok",)
    label: tuple[str, str] = kwokconfig.NODE_LABEL

    def check(self) -> None:
        pass

    def inputs(self, build_missing: bool, log: Log) -> list[images.Image]:
        return []

    def claim(self, plane: LocalCluster) -> None:
        pass

    def new_state(self, state: State, start: Start) -> None:
        pass

    def write_files(self, start: Start) -> None:
        kwokconfig.write(
            start.layout.kwok_config,
            server_port=start.ports.kwok,
            kubelet_version=versions.KUBERNETES_VERSION,
        )

    def apiserver_flags(self, lay: Layout) -> list[str]:
        return []

    def command(self, name: str, start: Start) -> tuple[list[str], dict[str, str]]:
        lay = start.layout
        argv = components.kwok(start.bins[name], lay, start.ports)
        return argv, dict(os.environ, KWOK_WORKDIR=str(lay.kwok_dir))  # never ~/.kwok/kwok.yaml

    def after_controllers(self, start: Start) -> None:
        create_nodes(start.api)

    def start(self, start: Start) -> None:
        kwok = ApiClient(f"http://127.0.0.1:{start.ports.kwok}")
        start.wait("kwok /healthz", lambda: kwok.ok("/healthz"))
        start.wait("nodes Ready and untainted", lambda: self._all_ready(start))

    def _all_ready(self, start: Start) -> bool:
        """Both fake nodes Ready with no taints left (not-ready taints go once Ready)."""
        return nodes_ready(start.api, self.label) == len(NODE_NAMES)

    def stop(self, plane: LocalCluster, state: State) -> list[str]:
        return []  # the controller stops with the control plane; the nodes go with etcd


def create_nodes(api: ApiClient) -> None:
    for name in NODE_NAMES:
        resp = api.post("/api/v1/nodes", kwokconfig.node_manifest(name))
        if resp.status not in (201, 409):
            raise ClusterError(f"creating node {name}: HTTP {resp.status}: {resp.body!r}")
