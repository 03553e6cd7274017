"""The harness' errors: what callers of ``Cluster`` catch."""

from __future__ import annotations

import subprocess
from pathlib import Path

from localcluster import process


class ClusterError(RuntimeError):
    """The cluster could not be started, reached or stopped."""


class ComponentError(ClusterError):
    """A component exited while we waited for it; the message has its log tail."""

    def __init__(self, component: str, log_path: Path, detail: str = "") -> None:
        self.component = component
        self.log_path = log_path
        self.tail = process.log_tail(log_path)
        why = f" ({detail})" if detail else ""
        super().__init__(f"{component} is not running{why}; last lines of {log_path}:\n{self.tail}")


class KubectlError(ClusterError):
    """kubectl exited non-zero; unlike CalledProcessError, the message shows its stderr."""

    def __init__(self, result: subprocess.CompletedProcess[str]) -> None:
        self.result = result
        cmd = " ".join(map(str, result.args))
        super().__init__(f"`{cmd}` exited {result.returncode}: {result.stderr.strip()}")
