"""The operator's NetworkPolicy is enforced on the real node (by kube-router's policy controller).

kube-network-policies needs the kernel's nft queue, which this kernel lacks; kube-router's
controller works with iptables and ipset only, so the harness runs it next to kube-proxy.
A client pod in the model's namespace gets answers; one in another namespace is refused until
``networkPolicy.allowFrom`` names its namespace.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
from kubernetes import client

from localcluster import images

from .support import Models, pod_log, probe_pod, wait_for, wait_routed

FILE_URI = "file:///opt/models/iris/model.joblib"


@pytest.fixture
def other_namespace(api_client: client.ApiClient, namespace: str) -> Iterator[str]:
    core = client.CoreV1Api(api_client)
    name = f"{namespace[:50]}-x{uuid.uuid4().hex[:4]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name)


def _probe(core: client.CoreV1Api, namespace: str, name: str, url: str) -> list[str]:
    """Run a probe pod for 12 s and return each call's outcome ("ok" or the error)."""
    core.create_namespaced_pod(namespace, probe_pod(name, url, 12, images.SERVER_IMAGE))

    def finished() -> bool:
        phase = core.read_namespaced_pod(name, namespace).status.phase
        return phase in ("Succeeded", "Failed")

    wait_for(f"probe pod {namespace}/{name} to finish", finished, timeout=90, interval=1)
    results: list[str] = json.loads(pod_log(core, namespace, name).strip().splitlines()[-1])
    return results


def test_only_allowed_namespaces_reach_the_model(
    models: Models, api_client: client.ApiClient, namespace: str, other_namespace: str
) -> None:
    core = client.CoreV1Api(api_client)
    models.create("iris-np", {"model": {"uri": FILE_URI, "version": "1"}})
    models.wait_condition("iris-np", "Ready", timeout=180)
    url = f"http://{models.cluster_ip('iris-np')}/v2/health/ready"
    wait_routed(url)  # the node itself may always reach its pods (kubelet probes)

    same = _probe(core, namespace, "same", url)
    other = _probe(core, other_namespace, "other", url)
    # A new pod's IP joins the policy's ipsets within a second or two of its start.
    assert "ok" in same, same
    assert same[-5:] == ["ok"] * 5, same
    assert "ok" not in other, other
    assert any("refused" in result for result in other), other

    models.patch_spec(
        "iris-np",
        {
            "networkPolicy": {
                "allowFrom": [
                    {
                        "namespaceSelector": {
                            "matchLabels": {"kubernetes.io/metadata.name": other_namespace}
                        }
                    }
                ]
            }
        },
    )
    models.wait_condition("iris-np", "Ready", timeout=60)
    allowed = _probe(core, other_namespace, "other-allowed", url)
    assert allowed[-5:] == ["ok"] * 5, allowed
