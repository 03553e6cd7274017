"""``Cluster``: the object tests and the CLI use, delegating to the kind of cluster chosen once.

Our own control plane (``local.py``) with KWOK's fake nodes (``kwoknodes.py``) or a real node
(``realnode.py``), or an existing cluster (``existing.py``): each is a ``backend.NodeBackend``,
picked in ``__init__``; no method here asks which one it has.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from types import TracebackType
from typing import Self

from localcluster import binaries, existing, kwokconfig
from localcluster.api import ApiClient
from localcluster.backend import ComponentStatus, Log, NodeBackend, Nodes, Status
from localcluster.components import Layout
from localcluster.errors import ClusterError, ComponentError, KubectlError
from localcluster.existing import ExistingCluster
from localcluster.kwoknodes import NODE_NAMES, KwokNodes
from localcluster.local import MARKER_TEXT, LocalCluster, nodes_ready
from localcluster.nodeconfig import NodeLayout
from localcluster.realnode import RealNode
from localcluster.state import State

__all__ = [
    "NODE_NAMES",
    "Cluster",
    "ClusterError",
    "ComponentError",
    "ComponentStatus",
    "KubectlError",
    "Status",
    "default_root",
    "repo_root",
    "use_existing_requested",
]

EXISTING_ENV_VARS = existing.ENV_VARS
use_existing_requested = existing.requested


def repo_root() -> Path:
    """The checkout we run in: the nearest parent of the cwd holding ``hack/localcluster``.

    Falls back to the package's own checkout, so ``python -m localcluster`` from anywhere
    inside (or outside) a clone finds the right ``.cluster/``.
    """
    here = Path.cwd().resolve()
    for d in (here, *here.parents):
        if (d / "pyproject.toml").is_file() and (d / "hack" / "localcluster").is_dir():
            return d
    return Path(__file__).resolve().parents[2]


def default_root() -> Path:
    env = os.environ.get("LOCALCLUSTER_ROOT")
    return Path(env) if env else repo_root() / ".cluster"


def stderr_log(msg: str) -> None:
    binaries.stderr_log(msg)


#: Which nodes a recorded state was started with: ``down`` and ``status`` follow the record.
_KINDS: dict[bool, Nodes] = {False: KwokNodes(), True: RealNode()}


def _kind_of(state: State | None) -> Nodes:
    return _KINDS[state.real_node if state is not None else False]


class Cluster:
    """A local control plane under ``root`` (or, in existing mode, ``KUBECONFIG``'s cluster).

    >>> c = Cluster(root=tmp_path / "cluster")   # doctest: +SKIP
    >>> c.up(); c.kubectl("get", "nodes"); c.down()  # doctest: +SKIP
    """

    def __init__(
        self,
        root: Path | str | None = None,
        *,
        use_existing: bool | None = None,
        build_missing: bool = False,
        real_node: bool = False,
        log: Log = stderr_log,
    ) -> None:
        self.root = Path(root).resolve() if root is not None else default_root().resolve()
        self.layout = Layout(self.root)
        self.node_layout = NodeLayout(self.root)
        self.real_node = real_node
        self.use_existing = existing.requested() if use_existing is None else use_existing
        self.build_missing = build_missing
        self.log = log
        self.backend: NodeBackend = (
            ExistingCluster(self.root, log)
            if self.use_existing
            else LocalCluster(
                self.root,
                _KINDS[real_node],
                kind_of=_kind_of,
                build_missing=build_missing,
                log=log,
            )
        )
        self._started_here = False

    # -- where things are ------------------------------------------------------------------

    @property
    def kubeconfig(self) -> Path:
        """Admin kubeconfig (in existing mode: the first file of ``$KUBECONFIG``)."""
        return self.backend.kubeconfig

    @property
    def bin_dir(self) -> Path:
        """A directory with every binary found (symlinks), for PATH or for tests.

        Binaries come from different places (the version cache, LOCALCLUSTER_BIN_DIR), so
        they are linked together under ``<root>/bin``.
        """
        if not self.layout.root.exists():
            # Mark it ours, or a later `up` would refuse the non-empty directory.
            self.layout.root.mkdir(parents=True)
            self.layout.marker.write_text(MARKER_TEXT)
        d = self.layout.bin
        d.mkdir(parents=True, exist_ok=True)
        everything = [b.name for b in binaries.known_binaries()]
        for name, path in binaries.locate_all(everything).items():
            if path is None:
                continue
            link = d / name
            if link.is_symlink() or link.exists():
                if link.resolve() == path.resolve():
                    continue
                link.unlink()
            link.symlink_to(path)
        return d

    @property
    def server(self) -> str:
        return self.backend.server

    def env(self) -> dict[str, str]:
        """Environment for tools that should talk to this cluster (kubectl, the operator)."""
        return {
            "KUBECONFIG": str(self.kubeconfig),
            "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    def kubectl(
        self,
        *args: str,
        check: bool = True,
        input: str | None = None,
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl (ours, else the one on PATH) against this cluster.

        Raises KubectlError when it fails and ``check`` is true.
        """
        found = binaries.locate_all(["kubectl"]).get("kubectl")
        exe = str(found) if found else shutil.which("kubectl")
        if exe is None:
            raise ClusterError("kubectl not found: run `make binaries`")
        env = dict(os.environ, KUBECONFIG=str(self.kubeconfig))
        result = subprocess.run(
            [exe, *args],
            check=False,
            capture_output=True,
            text=True,
            input=input,
            env=env,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise KubectlError(result)
        return result

    def client(self) -> ApiClient:
        """A stdlib client authenticated as admin (not available in existing mode)."""
        return self.backend.client()

    # -- state -----------------------------------------------------------------------------

    def is_up(self) -> bool:
        """Every recorded component is alive (existing mode: trusted to be up)."""
        return self.backend.is_up()

    def node_images(self) -> dict[str, Path]:
        """Image name -> OCI archive that the running real node imported (empty without one)."""
        return self.backend.node_images()

    def has_real_node(self) -> bool:
        """Whether the cluster under root was started with ``real_node``."""
        return self.backend.has_real_node()

    @staticmethod
    def nodes_ready(api: ApiClient, label: tuple[str, str] = kwokconfig.NODE_LABEL) -> int:
        """Ready, untainted nodes with ``label`` (default: the KWOK nodes)."""
        return nodes_ready(api, label)

    # -- up, down, status ------------------------------------------------------------------

    def up(self, timeout: float | None = None) -> bool:
        """Start the cluster; False if it was already up (or is an existing one).

        With ``real_node``, also build (or reuse) the node's images, then start containerd,
        the kubelet, kube-proxy, kube-router, metrics-server and CoreDNS instead of KWOK.
        """
        return self.backend.up(timeout)

    def down(self, *, keep_logs: bool = False) -> bool:
        """Stop the recorded processes and remove the state; False if nothing was running."""
        return self.backend.down(keep_logs=keep_logs)

    def status(self) -> Status:
        return self.backend.status()

    # -- context manager -------------------------------------------------------------------

    def __enter__(self) -> Self:
        self._started_here = self.up()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._started_here:  # leave a cluster that was already running alone
            self.down()
