"""A rollout to a new model version while a client on the pod network keeps sending requests.

The client is a pod (the server image has Python) that calls the Service's ClusterIP in a loop
from 4 threads, a new connection per request, and reports its counts once a second. Rolling
updates keep full capacity (maxUnavailable 0), the old pods leave the endpoints before they
stop (preStop) and drain what they accepted: not a single request may fail.
"""

from __future__ import annotations

import time

from kubernetes import client

from localcluster import images

from .support import Models, client_counts, http_json, load_client_pod, wait_for, wait_routed

FILE_URI = "file:///opt/models/iris/model.joblib"
SKOPS_URI = "file:///opt/models/iris/model.skops"


def test_rollout_to_a_new_model_version_under_load_fails_no_request(
    models: Models, api_client: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(api_client)
    models.create("iris-roll", {"model": {"uri": FILE_URI, "version": "1"}, "replicas": 2})
    models.wait_condition("iris-roll", "Ready", timeout=180)
    base = f"http://{models.cluster_ip('iris-roll')}"
    wait_routed(f"{base}/v2/health/ready")

    url = f"{base}/v1/models/iris-roll:predict"
    core.create_namespaced_pod(namespace, load_client_pod("load", url, 4, images.SERVER_IMAGE))
    warm = wait_for(
        "the client pod's first 50 answers",
        lambda: (c := client_counts(core, namespace, "load")) and c["ok"] >= 50 and c,
        timeout=120,
        interval=1,
    )
    assert warm["failed"] == 0, warm

    old = {p.metadata.name for p in models.pods("iris-roll")}
    started = time.monotonic()
    models.patch_spec("iris-roll", {"model": {"uri": SKOPS_URI, "format": "skops", "version": "2"}})
    models.wait_condition("iris-roll", "Ready", timeout=240)
    wait_for(
        "the old pods to be gone",
        lambda: not old & {p.metadata.name for p in models.pods("iris-roll")},
        timeout=120,
        interval=1,
    )
    rolled = time.monotonic() - started

    # Keep the load on a little longer, on the new pods only.
    mark = client_counts(core, namespace, "load")
    assert mark is not None
    final = wait_for(
        "50 more answers after the rollout",
        lambda: (c := client_counts(core, namespace, "load")) and c["ok"] >= mark["ok"] + 50 and c,
        timeout=60,
        interval=1,
    )
    core.delete_namespaced_pod("load", namespace, grace_period_seconds=0)

    assert final["failed"] == 0, f"{final['failed']} failed requests: {final['errors']}"
    assert final["ok"] > warm["ok"] + 50
    status, answer = http_json(
        f"{base}/v2/models/iris-roll/infer",
        {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [5, 3, 1, 0]}]},
    )
    assert status == 200, answer
    assert answer["model_version"] == "2"
    pods = models.pods("iris-roll")
    assert len(pods) == 2
    assert all(p.spec.containers[0].env for p in pods)
    print(f"rollout of 2 replicas took {rolled:.0f}s; {final['ok']} requests, none failed")
