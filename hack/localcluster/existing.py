"""An existing cluster (``KUBECONFIG``'s, for example kind): nothing to start, stop or build."""

from __future__ import annotations

import os
from pathlib import Path

from localcluster.api import ApiClient
from localcluster.backend import Log, Status
from localcluster.errors import ClusterError

ENV_VARS = ("LOCALCLUSTER_USE_EXISTING", "USE_EXISTING_CLUSTER")
_TRUE = {"1", "true", "yes", "on"}


def requested() -> bool:
    """True if the environment asks to use ``KUBECONFIG``'s cluster instead of starting one."""
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in ENV_VARS)


class ExistingCluster:
    """``backend.NodeBackend`` for a cluster someone else runs: trusted to be up."""

    def __init__(self, root: Path, log: Log) -> None:
        self.root = root
        self.log = log

    @property
    def kubeconfig(self) -> Path:
        """The first file of ``$KUBECONFIG``."""
        env = os.environ.get("KUBECONFIG", "")
        first = env.split(os.pathsep)[0] if env else ""
        if not first:
            raise ClusterError(f"{' or '.join(ENV_VARS)} is set but KUBECONFIG is not")
        return Path(first).expanduser()

    @property
    def server(self) -> str:
        raise ClusterError(f"no cluster running under {self.root}")

    def client(self) -> ApiClient:
        raise ClusterError("the built-in client needs our own PKI; use KUBECONFIG instead")

    def is_up(self) -> bool:
        return True

    def up(self, timeout: float | None) -> bool:
        kc = self.kubeconfig
        if not kc.is_file():
            raise ClusterError(f"KUBECONFIG {kc} does not exist")
        self.log(f"using the existing cluster of {kc}; nothing to start")
        return False

    def down(self, *, keep_logs: bool) -> bool:
        self.log("existing cluster: nothing to stop")
        return False

    def status(self) -> Status:
        return Status(self.root, True, self.kubeconfig, None, (), True, 0)

    def has_real_node(self) -> bool:
        return False

    def node_images(self) -> dict[str, Path]:
        return {}
