"""The interfaces ``Cluster`` delegates to: one per kind of cluster, chosen once.

``NodeBackend`` is what ``Cluster`` calls: ``existing.ExistingCluster`` (``KUBECONFIG``'s cluster,
nothing started) and ``local.LocalCluster`` (our control plane on 127.0.0.1) implement it.
``LocalCluster`` gets its nodes from a ``Nodes``: ``kwoknodes.KwokNodes`` (fake nodes) or
``realnode.RealNode`` (containerd, kubelet, ...). Each answers for itself; nothing asks which
kind it is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from localcluster import certs, images
from localcluster.api import ApiClient
from localcluster.components import Layout, Ports
from localcluster.nodeconfig import NodeLayout, NodePorts
from localcluster.state import State

if TYPE_CHECKING:
    from localcluster.local import LocalCluster

Log = Callable[[str], None]


@dataclass(frozen=True)
class ComponentStatus:
    name: str
    pid: int | None
    running: bool
    log: Path


@dataclass(frozen=True)
class Status:
    root: Path
    existing: bool
    kubeconfig: Path
    server: str | None
    components: tuple[ComponentStatus, ...]
    ready: bool
    nodes_ready: int

    @property
    def up(self) -> bool:
        return self.existing or (bool(self.components) and all(c.running for c in self.components))


class NodeBackend(Protocol):
    """One kind of cluster, as ``Cluster`` uses it."""

    @property
    def kubeconfig(self) -> Path: ...

    @property
    def server(self) -> str: ...

    def client(self) -> ApiClient: ...

    def is_up(self) -> bool: ...

    def up(self, timeout: float | None) -> bool: ...

    def down(self, *, keep_logs: bool) -> bool: ...

    def status(self) -> Status: ...

    def has_real_node(self) -> bool: ...

    def node_images(self) -> dict[str, Path]: ...


@dataclass
class Start:
    """What a ``Nodes`` needs while ``up`` runs: paths, ports, credentials, and the plane."""

    plane: LocalCluster
    state: State
    ports: Ports
    node_ports: NodePorts
    server: str
    pki: certs.Pki
    bins: Mapping[str, Path]
    built: list[images.Image]
    deadline: float
    #: Admin client, set once the apiserver is ready.
    api: ApiClient = field(init=False)

    @property
    def layout(self) -> Layout:
        return self.plane.layout

    @property
    def node_layout(self) -> NodeLayout:
        return self.plane.node_layout

    def launch(self, name: str) -> None:
        self.plane.launch(name, self)

    def wait(self, what: str, ready: Callable[[], bool]) -> None:
        self.plane.wait(what, ready, self.deadline)


class Nodes(Protocol):
    """What one kind of node adds to the local control plane, in start and stop order."""

    #: Recorded in state.json: ``down`` and ``status`` take the same kind again.
    real_node: bool
    #: For messages: "" or " with a real node".
    description: str
    timeout: float
    #: Started right after the controller-manager and scheduler (KWOK's controller).
    with_controllers: tuple[str, ...]
    #: Every process this kind runs besides the control plane, in start order.
    processes: tuple[str, ...]
    #: Built binaries it needs besides the control plane's and kubectl.
    binaries: tuple[str, ...]
    #: The label of the nodes ``status`` counts.
    label: tuple[str, str]

    def check(self) -> None: ...

    def inputs(self, build_missing: bool, log: Log) -> list[images.Image]: ...

    def claim(self, plane: LocalCluster) -> None: ...

    def new_state(self, state: State, start: Start) -> None: ...

    def write_files(self, start: Start) -> None: ...

    def apiserver_flags(self, lay: Layout) -> list[str]: ...

    def command(self, name: str, start: Start) -> tuple[list[str], dict[str, str]]: ...

    def after_controllers(self, start: Start) -> None: ...

    def start(self, start: Start) -> None: ...

    def stop(self, plane: LocalCluster, state: State) -> list[str]: ...
