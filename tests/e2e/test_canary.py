"""Canary rollouts on the real node, with a client pod calling ``status.url`` throughout.

One ModelDeployment goes through the cases one after the other (each is a spec change of the
same resource, as in production): a good version promoted step by step, with the operator
killed (SIGKILL) and restarted at step 1; a version that predicts one constant class, rolled back
by the prediction-shift gate; a version that fails on real inputs (5xx), rolled back by the
error-rate gate; a version that never becomes Ready, rolled back at the progress deadline; and
the abort / promote annotations. The stable version serves the client the whole time.
"""

from __future__ import annotations

import hashlib
import io
import operator as std_operator
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import joblib
import pytest
from kubernetes import client
from sklearn.datasets import load_iris
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

import localcluster
from localcluster import images, process
from modeldeploy import canary

from .support import (
    Models,
    client_counts,
    file_server,
    install_crd,
    load_client_pod,
    operator_kubeconfig,
    operator_process,
    wait_for,
)

FILE_URI = "file:///opt/models/iris/model.joblib"
SKOPS_URI = "file:///opt/models/iris/model.skops"
NAME = "iris-canary-e2e"


class Operator:
    """The operator as a process that a test can kill (SIGKILL) and start again."""

    def __init__(self, kubeconfig: Path, log: Path) -> None:
        self._kubeconfig, self._log = kubeconfig, log
        self._running: Any = None
        self.proc: Any = None
        self.metrics_port = 0
        self.api_calls_before = 0.0  # API requests made by the processes killed so far

    def start(self) -> None:
        (self.metrics_port,) = process.free_ports(1)
        self._running = operator_process(self._kubeconfig, self._log, self.metrics_port)
        self.proc = self._running.__enter__()

    def api_calls(self) -> float:
        """Kubernetes API requests made so far, by every process of this operator."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        calls = sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("modeldeploy_api_requests_total{")
        )
        return self.api_calls_before + calls

    def kill_and_restart(self) -> None:
        self.api_calls_before = self.api_calls()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._running.__exit__(None, None, None)
        self.start()

    def stop(self) -> None:
        if self._running is not None:
            self._running.__exit__(None, None, None)


@pytest.fixture(scope="module")
def operator(
    cluster: localcluster.Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Operator]:
    """This module's operator: killed and restarted by a test."""
    install_crd(cluster)
    kubeconfig = operator_kubeconfig(cluster, tmp_path_factory.mktemp("op") / "kubeconfig")
    handle = Operator(kubeconfig, cluster.layout.logs / "operator-canary.log")
    handle.start()
    yield handle
    handle.stop()


def _joblib(model: Any) -> bytes:
    buffer = io.BytesIO()
    joblib.dump(model, buffer)
    return buffer.getvalue()


def _bad_models() -> dict[str, bytes]:
    """A model that answers one class whatever it is asked, and one that fails (500) on every
    real input: its first step indexes the input array by a name (IndexError)."""
    x, y = load_iris(return_X_y=True)
    constant = DummyClassifier(strategy="constant", constant=0).fit(x, y)
    broken_step = FunctionTransformer(validate=True).fit(x)
    broken_step.func = std_operator.itemgetter("petal width")
    broken = Pipeline(
        [("select", broken_step), ("classify", LogisticRegression(max_iter=500).fit(x, y))]
    )
    return {"/constant.joblib": _joblib(constant), "/broken.joblib": _joblib(broken)}


def _spec(model: dict[str, Any], deadline: int = 180) -> dict[str, Any]:
    """Every field set: patches are JSON merge patches, a field left out keeps its old value
    (a digest left out would stay pinned to the last version's bytes; null removes it)."""
    return {
        "model": {"format": "joblib", "digest": None, **model},
        "replicas": 2,
        "rollout": {
            "strategy": "Canary",
            "progressDeadlineSeconds": deadline,
            "canary": {
                "steps": [{"weight": 25, "pauseSeconds": 5}, {"weight": 50, "pauseSeconds": 5}],
                "analysis": {
                    "intervalSeconds": 5,
                    "minRequests": 20,
                    "maxErrorRate": 0.05,
                    "maxLatencyRatio": 20,
                    "maxPredictionShift": 0.5,
                    "failureLimit": 1,
                },
            },
        },
    }


def _canary(models: Models) -> dict[str, Any]:
    return dict((models.get(NAME).get("status") or {}).get("canary") or {})


def _wait_state(models: Models, version: str, state: str, timeout: float) -> dict[str, Any]:
    last: dict[str, Any] = {}

    def probe() -> dict[str, Any] | None:
        nonlocal last
        last = _canary(models)
        right = last.get("model", {}).get("version") == version and last.get("state") == state
        return last if right else None

    try:
        return wait_for(f"canary of version {version} {state}", probe, timeout, interval=1)
    except AssertionError as error:
        ready = models.current_condition(models.get(NAME), "Ready")
        raise AssertionError(f"{error}; status.canary: {last}; Ready: {ready}") from None


def _reasons(core: client.CoreV1Api, namespace: str) -> list[str]:
    events = core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={NAME}")
    return [e.reason for e in sorted(events.items, key=lambda e: e.metadata.creation_timestamp)]


def _ok_after(core: client.CoreV1Api, namespace: str, more: int) -> dict[str, Any]:
    mark = client_counts(core, namespace, "load")
    assert mark is not None
    return wait_for(
        f"{more} more answers",
        lambda: (
            (c := client_counts(core, namespace, "load")) and c["ok"] >= mark["ok"] + more and c
        ),
        timeout=60,
        interval=1,
    )


@pytest.mark.timeout(900)  # five canaries one after the other: about six minutes
def test_canary_rollouts_promote_good_versions_and_roll_back_bad_ones(
    models: Models,
    api_client: client.ApiClient,
    namespace: str,
    node_ip: str,
    operator: Operator,
) -> None:
    core = client.CoreV1Api(api_client)
    first = _spec({"uri": FILE_URI, "version": "1"})
    del first["model"]["digest"]
    models.create(NAME, first)
    body = models.wait_condition(NAME, "Ready", timeout=180)
    # The client calls status.url, as users do: cluster DNS resolves the Service's name.
    url = f"{body['status']['url']}/v1/models/{NAME}:predict"
    core.create_namespaced_pod(namespace, load_client_pod("load", url, 4, images.SERVER_IMAGE))
    wait_for(
        "the client pod's first answers",
        lambda: (c := client_counts(core, namespace, "load")) and c["ok"] >= 50,
        timeout=120,
        interval=1,
    )

    # 1. A good version through both steps, the operator killed at step 1: promoted.
    started, calls = time.monotonic(), operator.api_calls()
    models.patch_spec(NAME, _spec({"uri": SKOPS_URI, "format": "skops", "version": "2"}))
    at_step_1 = wait_for(
        "step 1 analysed",
        lambda: (c := _canary(models)).get("step") == 1 and c.get("splitAt") and c,
        timeout=120,
        interval=1,
    )
    assert at_step_1["weight"] == 50  # 2 replicas: one canary pod and one stable pod
    operator.kill_and_restart()
    promoted = _wait_state(models, "2", "Promoted", timeout=180)
    wait_for("the canary Deployment gone", lambda: models.deployment(f"{NAME}-canary") is None, 120)
    body = models.wait_condition(NAME, "Ready", timeout=120)
    promotion_seconds = time.monotonic() - started
    canary_calls = operator.api_calls() - calls
    assert body["status"]["model"]["version"] == "2"
    assert promoted["steps"] == 2
    reasons = _reasons(core, namespace)
    assert reasons.count("CanaryStep") >= 2, reasons
    assert "CanaryPromoted" in reasons
    counts = _ok_after(core, namespace, 50)
    assert counts["failed"] == 0, counts["errors"]

    bad = _bad_models()
    with file_server(bad, node_ip) as (base, _):

        def http_model(path: str, version: str) -> dict[str, Any]:
            digest = "sha256:" + hashlib.sha256(bad[path]).hexdigest()
            return {
                "uri": f"{base}{path}",
                "format": "joblib",
                "digest": digest,
                "version": version,
            }

        # 2. One constant class: the prediction-shift gate rolls it back; nothing failed.
        models.patch_spec(NAME, _spec(http_model("/constant.joblib", "3")))
        rolled = _wait_state(models, "3", "RolledBack", timeout=240)
        assert "prediction shift" in rolled["analysis"]["message"], rolled
        body = models.wait_condition(NAME, "Stalled", "True", "CanaryRolledBack", timeout=30)
        assert "prediction shift" in models.current_condition(body, "Stalled")["message"]  # type: ignore[index]
        assert body["status"]["model"]["version"] == "2"
        counts = _ok_after(core, namespace, 50)
        assert counts["failed"] == 0, counts["errors"]

        # 3. 5xx on real inputs: the error-rate gate rolls it back; then no more failures.
        models.patch_spec(NAME, _spec(http_model("/broken.joblib", "4")))
        rolled = _wait_state(models, "4", "RolledBack", timeout=240)
        assert "error rate" in rolled["analysis"]["message"], rolled
        wait_for(
            "the broken canary's pods gone (they leave the endpoints as they terminate)",
            lambda: (
                not any(
                    (p.metadata.labels or {}).get(canary.TRACK_LABEL) == canary.CANARY
                    for p in models.pods(NAME)
                )
            ),
            90,
            interval=1,
        )
        time.sleep(2)  # the client reports once a second: a report from before the last pod left
        before = client_counts(core, namespace, "load")
        assert before is not None
        after = _ok_after(core, namespace, 100)
        assert after["failed"] == before["failed"], after["errors"]

        # 4. Never Ready (the artifact is not there): rolled back at progressDeadlineSeconds.
        missing = {
            "uri": f"{base}/missing.joblib",
            "format": "joblib",
            "digest": "sha256:" + "0" * 64,
            "version": "5",
        }
        models.patch_spec(NAME, _spec(missing, deadline=30))
        rolled = _wait_state(models, "5", "RolledBack", timeout=120)
        assert "progress deadline" in rolled["analysis"]["message"], rolled
        assert "ModelFetchFailed" in rolled["analysis"]["message"], rolled  # and why

    # 5. abort, then promote, by annotation.
    def annotate(value: str) -> None:
        models.custom.patch_namespaced_custom_object(
            "serving.modeldeploy.io",
            "v1alpha1",
            namespace,
            "modeldeployments",
            NAME,
            {"metadata": {"annotations": {canary.COMMAND_ANNOTATION: value}}},
        )

    models.patch_spec(NAME, _spec({"uri": FILE_URI, "format": "joblib", "version": "6"}))
    _wait_state(models, "6", "Progressing", timeout=60)
    annotate("abort")
    _wait_state(models, "6", "RolledBack", timeout=60)
    models.patch_spec(NAME, _spec({"uri": FILE_URI, "format": "joblib", "version": "7"}))
    _wait_state(models, "7", "Progressing", timeout=60)
    annotate("promote")
    _wait_state(models, "7", "Promoted", timeout=60)
    body = models.wait_condition(NAME, "Ready", timeout=180)
    assert body["status"]["model"]["version"] == "7"

    final = _ok_after(core, namespace, 50)
    core.delete_namespaced_pod("load", namespace, grace_period_seconds=0)
    # Failures only from the broken version's canary pods (case 3), none from the stable.
    assert final["failed"] == after["failed"], final["errors"]
    print(
        f"promotion with 2 steps of 5s took {promotion_seconds:.0f}s and "
        f"{canary_calls:.0f} Kubernetes API requests (operator restart included); "
        f"{final['ok']} requests answered, {final['failed']} failed (all by the broken canary)"
    )
