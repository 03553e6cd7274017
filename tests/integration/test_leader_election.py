"""Two operator processes (``python -m modeldeploy --leader-election``, as the installed
Deployment runs them) against the real API server: one leads, the other stands by and takes
over when the leader stops (SIGTERM: it releases the Lease) or dies (SIGKILL)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from .operator_support import (
    OPERATOR_NAMESPACE,
    ROOT,
    SERVER_IMAGE,
    Models,
    crd_installed,  # noqa: F401 - fixture
    operator_kubeconfig,  # noqa: F401 - fixture
    wait_for,
)

pytestmark = pytest.mark.slow

MODEL = {"uri": "file:///opt/models/iris/model.joblib", "version": "1"}
LEASE = "modeldeploy-operator"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Replica:
    """One operator process with its own probe and metrics ports and its log file."""

    def __init__(self, kubeconfig: Path, log: Path, name: str):
        self.health, self.metrics = _free_port(), _free_port()
        self.log = log
        env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "MODELDEPLOY_LEADER_ELECTION": "true",
            "POD_NAMESPACE": OPERATOR_NAMESPACE,
        }
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "modeldeploy",
                    f"--server-image={SERVER_IMAGE}",
                    f"--health-port={self.health}",
                    f"--metrics-port={self.metrics}",
                ],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.name = name

    def _ready(self) -> dict[str, str] | None:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.health}/readyz", timeout=1
            ) as answer:
                body: dict[str, str] = json.load(answer)
                return body
        except (OSError, urllib.error.URLError):
            return None

    def role(self) -> str | None:
        return (self._ready() or {}).get("role")

    def identity(self) -> str | None:
        return (self._ready() or {}).get("identity")

    def writes(self) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics}/metrics", timeout=2) as r:
            text = r.read().decode()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("modeldeploy_api_writes_total{")
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@contextlib.contextmanager
def replicas(kubeconfig: Path, tmp_path: Path, *names: str) -> Iterator[list[Replica]]:
    started = [Replica(kubeconfig, tmp_path / f"{name}.log", name) for name in names]
    try:
        yield started
    finally:
        for replica in started:
            replica.stop()


def _holder(api_client: client.ApiClient) -> str | None:
    lease = client.CoordinationV1Api(api_client).read_namespaced_lease(LEASE, OPERATOR_NAMESPACE)
    holder: str | None = lease.spec.holder_identity
    return holder


def test_one_leader_reconciles_and_the_standby_takes_over_on_sigterm_and_sigkill(
    crd_installed: None,  # noqa: F811 - fixture
    operator_kubeconfig: Path,  # noqa: F811 - fixture
    api_client: client.ApiClient,
    namespace: str,
    tmp_path: Path,
) -> None:
    models = Models(api_client, namespace)
    with replicas(operator_kubeconfig, tmp_path, "op-a", "op-b", "op-c") as (a, b, c):
        wait_for("both roles answered", lambda: a.role() and b.role() and c.role(), timeout=30)
        leader = wait_for(
            "a leader", lambda: next((r for r in (a, b, c) if r.role() == "leader"), None)
        )
        standbys = [r for r in (a, b, c) if r is not leader]
        assert [r.role() for r in standbys] == ["standby", "standby"]
        assert _holder(api_client) == leader.identity()

        models.create("led", {"model": MODEL, "replicas": 1})
        models.wait_condition("led", "Ready", timeout=30)
        assert all(r.writes() == 0 for r in standbys), "a standby wrote"

        # SIGTERM: the leader stops kopf and releases the Lease; a standby leads at once.
        leader.process.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        second = wait_for(
            "a new leader after SIGTERM",
            lambda: next((r for r in standbys if r.role() == "leader"), None),
            timeout=10,
            interval=0.05,
        )
        handover = time.monotonic() - stopped
        assert leader.process.wait(30) == 0, leader.log.read_text()[-2000:]
        assert handover < 3.0, f"took {handover:.1f}s"
        print(f"SIGTERM handover {handover:.2f}s")
        models.patch_spec("led", {"model": {**MODEL, "version": "2"}})
        models.wait_condition("led", "Ready", timeout=30)

        # SIGKILL: nothing is released; the last standby leads once the lease expires.
        (third,) = [r for r in standbys if r is not second]
        second.process.kill()
        killed = time.monotonic()
        wait_for("the last standby leads", lambda: third.role() == "leader", timeout=30)
        takeover = time.monotonic() - killed
        assert takeover < 15 + 3, f"took {takeover:.1f}s"
        print(f"SIGKILL takeover {takeover:.2f}s (lease duration 15 s)")
        models.patch_spec("led", {"model": {**MODEL, "version": "3"}})
        body = models.wait_condition("led", "Ready", timeout=30)
        assert body["status"]["model"]["version"] == "3"
        assert _holder(api_client) == third.identity()
