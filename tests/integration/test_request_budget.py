"""What one resource's whole life costs the API server, in requests, against a stated budget:
the count cannot creep back without this test saying so.

The operator runs in-process and watches only the test's namespace, so every request it
counts (``modeldeploy_api_requests_total``) is this resource's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from kubernetes import client
from prometheus_client import REGISTRY

from .operator_support import (
    Models,
    children,
    crd_installed,  # noqa: F401 - fixture
    operator_kubeconfig,  # noqa: F401 - fixture
    running_operator,
    wait_for,
)

FILE_MODEL = {"uri": "file:///opt/models/iris/model.joblib", "version": "1"}

# A new resource: three creates (Deployment, Service, NetworkPolicy, each refused if the name is
# taken, so nothing is read first) and two status writes (Creating, then Ready); no Event.
CREATE_BUDGET = 5
# A spec change: the Deployment's ownership made an apply's (once in its life, see
# Kube.own_as_applied), its apply, status written as the rollout starts and ends (no Event:
# routine), and one pod list if the rollout takes longer than 5 s.
CHANGE_BUDGET = 5
# Deletion: the API server's garbage collector removes the children; the operator sends nothing.
DELETE_BUDGET = 0


def _requests() -> dict[str, float]:
    """The operator's API requests so far, per "VERB Kind"."""
    out: dict[str, float] = {}
    for family in REGISTRY.collect():
        if family.name != "modeldeploy_api_requests":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                key = f"{sample.labels['verb']} {sample.labels['kind']}"
                out[key] = out.get(key, 0.0) + sample.value
    return out


def _settled(quiet: float = 1.5, timeout: float = 30.0) -> dict[str, float]:
    """The counters once they have not moved for ``quiet`` seconds (the passes that the last
    watch events caused are done)."""
    deadline = time.monotonic() + timeout
    last, since = _requests(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = _requests()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return now
    raise TimeoutError("the operator kept sending requests")


def _phase(
    step: Callable[[], None], before: dict[str, float]
) -> tuple[dict[str, float], dict[str, float]]:
    """Run one step of the life; the counters after it, and its requests per call."""
    step()
    after = _settled()
    return after, {k: v - before.get(k, 0.0) for k, v in after.items() if v > before.get(k, 0.0)}


def test_one_resources_life_stays_within_its_request_budget(
    crd_installed: None,  # noqa: F811 - fixture
    operator_kubeconfig: Path,  # noqa: F811 - fixture
    api_client: client.ApiClient,
    namespace: str,
) -> None:
    models = Models(api_client, namespace)
    spent: dict[str, dict[str, float]] = {}
    with running_operator(operator_kubeconfig, namespaces=(namespace,)):
        baseline = _settled()  # after the start-up sweep of token-review bindings

        def create() -> None:
            models.create("life", {"model": FILE_MODEL, "replicas": 1})
            models.wait_condition("life", "Ready", "True", timeout=90)

        def change() -> None:
            models.patch_spec("life", {"model": {**FILE_MODEL, "version": "2"}})
            models.wait_condition("life", "Ready", "True", timeout=90)

        def delete() -> None:
            models.delete("life")
            wait_for(
                "the children garbage-collected",
                lambda: not any(children(api_client, namespace, "life").values()),
                timeout=60,
            )

        before = baseline
        for name, step in (("create", create), ("change", change), ("delete", delete)):
            before, spent[name] = _phase(step, before)
    budgets = {"create": CREATE_BUDGET, "change": CHANGE_BUDGET, "delete": DELETE_BUDGET}
    for name, budget in budgets.items():
        assert sum(spent[name].values()) <= budget, f"{name}: {spent}"
    print(f"requests per phase of one resource's life: {spent}")
    # The floor: a resource cannot come to be with fewer than its three creates.
    assert spent["create"].get("POST Deployment") == 1, spent
