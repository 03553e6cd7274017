"""The HPA scales the model server on real CPU usage (metrics-server) and back down.

metrics-server, built from its Go module and registered as the v1beta1.metrics.k8s.io
APIService, reads the kubelet's summary API; the controller-manager's HPA syncs every 5 s. A
load client pod drives CPU far above the target, then stops; a 15 s scale-down stabilization
window (the resource's own setting) keeps the test short.
"""

from __future__ import annotations

import time
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from localcluster import images

from .support import Models, client_counts, load_client_pod, wait_for, wait_routed

FILE_URI = "file:///opt/models/iris/model.joblib"


def _pod_metrics(custom: client.CustomObjectsApi, namespace: str) -> list[dict[str, Any]]:
    try:
        items: list[dict[str, Any]] = custom.list_namespaced_custom_object(
            "metrics.k8s.io", "v1beta1", namespace, "pods"
        )["items"]
    except ApiException:
        return []
    return items


def test_hpa_scales_up_under_load_and_back_down_after(
    models: Models, api_client: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(api_client)
    custom = client.CustomObjectsApi(api_client)
    models.create(
        "iris-hpa",
        {
            "model": {"uri": FILE_URI, "version": "1"},
            "autoscaling": {
                "minReplicas": 1,
                "maxReplicas": 3,
                "targetCPUUtilizationPercentage": 50,
                "scaleDownStabilizationSeconds": 15,
            },
            "resources": {
                "requests": {"cpu": "100m", "memory": "128Mi"},
                "limits": {"cpu": "500m", "memory": "512Mi"},
            },
        },
    )
    models.wait_condition("iris-hpa", "Ready", timeout=180)
    base = f"http://{models.cluster_ip('iris-hpa')}"
    wait_routed(f"{base}/v2/health/ready")

    # The metrics API answers for the model pod, and the HPA reads it.
    wait_for("pod metrics from metrics-server", lambda: _pod_metrics(custom, namespace), 90)

    def hpa() -> client.V2HorizontalPodAutoscaler:
        return models.autoscaling.read_namespaced_horizontal_pod_autoscaler("iris-hpa", namespace)

    wait_for("the HPA's first CPU reading", lambda: hpa().status.current_metrics, 90, 1)
    assert hpa().status.current_replicas == 1

    url = f"{base}/v1/models/iris-hpa:predict"
    core.create_namespaced_pod(namespace, load_client_pod("load", url, 8, images.SERVER_IMAGE))
    started = time.monotonic()
    wait_for("the HPA to want more replicas", lambda: hpa().status.desired_replicas > 1, 180, 1)
    wait_for(
        "2+ ready model pods",
        lambda: (models.get("iris-hpa").get("status") or {}).get("readyReplicas", 0) >= 2,
        180,
        1,
    )
    scaled_up = time.monotonic() - started
    peak = hpa().status.current_metrics[0].resource.current.average_utilization
    counts = client_counts(core, namespace, "load")
    core.delete_namespaced_pod("load", namespace, grace_period_seconds=0)
    assert counts is not None
    assert counts["ok"] > 0

    stopped = time.monotonic()
    wait_for(
        "the Deployment back at 1 replica",
        lambda: models.apps.read_namespaced_deployment("iris-hpa", namespace).spec.replicas == 1,
        240,
        2,
    )
    scaled_down = time.monotonic() - stopped
    models.wait_condition("iris-hpa", "Ready", timeout=120)
    print(
        f"scaled up in {scaled_up:.0f}s (CPU {peak}% of request), "
        f"back to 1 replica {scaled_down:.0f}s after the load stopped"
    )
