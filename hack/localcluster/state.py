"""What ``up`` records about a running cluster, typed, and the one place that reads and writes it.

``<root>/state.json`` is how ``down``, ``status`` and a later ``up`` (possibly another process)
find the cluster again: its processes (pid and start time), ports, the components it was
started with and, with a real node, the host changes to undo. The JSON layout is the one
earlier versions wrote; a state from before ``components`` was recorded means the KWOK set.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localcluster import components, process
from localcluster.components import Ports
from localcluster.host import HostUndo
from localcluster.nodeconfig import NodePorts


@dataclass
class State:
    server: str
    ports: Ports
    kubeconfig: str
    #: Component names in start order (``down`` stops them in reverse).
    components: tuple[str, ...]
    versions: dict[str, str]
    real_node: bool = False
    started: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    processes: dict[str, process.Record] = field(default_factory=dict)
    # The real node only:
    node_ports: NodePorts | None = None
    #: Image name -> OCI archive imported into the node's containerd.
    images: dict[str, str] = field(default_factory=dict)
    #: The undo journal of the host changes (None until the node starts changing the host).
    host: HostUndo | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "versions": self.versions,
            "server": self.server,
            "ports": self.ports.to_json(),
            "kubeconfig": self.kubeconfig,
            "started": self.started,
            "real_node": self.real_node,
            "components": list(self.components),
            "processes": {name: rec.to_json() for name, rec in self.processes.items()},
        }
        if self.node_ports is not None:
            data["node_ports"] = self.node_ports.to_json()
        if self.real_node:
            data["images"] = self.images
        if self.host is not None:
            data["host"] = self.host.to_json()
        return data

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> State:
        node_ports = d.get("node_ports")
        host = d.get("host")
        return cls(
            server=str(d["server"]),
            ports=Ports(**d["ports"]),
            kubeconfig=str(d["kubeconfig"]),
            components=tuple(d.get("components") or components.ORDER),
            versions=dict(d.get("versions") or {}),
            real_node=bool(d.get("real_node")),
            started=str(d.get("started", "")),
            processes={
                name: process.Record.from_json(rec)
                for name, rec in (d.get("processes") or {}).items()
            },
            node_ports=NodePorts(**node_ports) if node_ports else None,
            images={str(k): str(v) for k, v in (d.get("images") or {}).items()},
            host=HostUndo.from_json(host) if host is not None else None,
        )


def load(path: Path) -> State | None:
    """The state under ``path``, or None when there is none (or it is unreadable)."""
    try:
        data = json.loads(path.read_text())
        return State.from_json(data)
    except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError):
        return None


def save(path: Path, state: State) -> None:
    """Write atomically: a reader never sees half a file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state.to_json(), indent=2))
    tmp.replace(path)
