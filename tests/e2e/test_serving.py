"""Models really served on a real node: Ready only once loaded, right answers via the Service.

The host calls each Service's ClusterIP; kube-proxy's iptables rules take the request to a
pod on the node's bridge. Expected answers come from loading the image's own model file in
this process with the same scikit-learn version the image pins.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from kubernetes import client

from server.support import s3_server

from .support import Models, http_json, sha256, v2_request, wait_for, wait_routed

FILE_URI = "file:///opt/models/iris/model.joblib"
ROWS = [
    [5.1, 3.5, 1.4, 0.2],
    [6.7, 3.0, 5.2, 2.3],
    [5.9, 3.0, 4.2, 1.5],
    [6.3, 2.5, 5.0, 1.9],
    [4.9, 3.1, 1.5, 0.1],
]


def in_process(model_bytes: bytes) -> list[Any]:
    model = joblib.load(io.BytesIO(model_bytes))
    predictions: list[Any] = model.predict(np.asarray(ROWS, dtype=np.float64)).tolist()
    return predictions


def assert_serves(models: Models, name: str, expected: list[Any]) -> None:
    """V1 and V2 answers through the Service's ClusterIP equal the in-process predictions."""
    base = f"http://{models.cluster_ip(name)}"
    wait_routed(f"{base}/v2/models/{name}/ready")
    status, v1 = http_json(f"{base}/v1/models/{name}:predict", {"instances": ROWS})
    assert status == 200, v1
    assert v1["predictions"] == expected
    status, v2 = http_json(f"{base}/v2/models/{name}/infer", v2_request(ROWS))
    assert status == 200, v2
    (output,) = v2["outputs"]
    assert output["shape"] == [len(ROWS)]
    assert output["data"] == expected


def assert_pods_ready(models: Models, name: str, replicas: int) -> None:
    pods = models.pods(name)
    assert len(pods) == replicas
    for pod in pods:
        assert pod.status.phase == "Running"
        (server,) = pod.status.container_statuses
        assert server.ready, pod.metadata.name
        assert server.restart_count == 0, pod.metadata.name


def test_file_model_is_ready_and_answers_like_the_model_in_process(
    models: Models, example_model: bytes
) -> None:
    expected = in_process(example_model)
    models.create(
        "iris-file",
        {"model": {"uri": FILE_URI, "digest": sha256(example_model), "version": "1"}},
    )
    models.wait_condition("iris-file", "Ready", timeout=180)
    body = models.get("iris-file")
    assert body["status"]["phase"] == "Ready"
    assert body["status"]["readyReplicas"] == 1
    assert_pods_ready(models, "iris-file", 1)
    assert_serves(models, "iris-file", expected)


def test_http_model_is_ready_only_once_downloaded_and_verified(
    models: Models, example_model: bytes, node_ip: str
) -> None:
    """The model comes from a server on the node's network, held back for a while."""
    # Local import: the fixture module's server must bind the node's bridge address.
    from .support import file_server  # noqa: PLC0415

    expected = in_process(example_model)
    hold = 15.0
    with file_server({"/iris/v1/model.joblib": example_model}, node_ip, delay=hold) as (
        url,
        requested,
    ):
        models.create(
            "iris-http",
            {
                "model": {
                    "uri": f"{url}/iris/v1/model.joblib",
                    "digest": sha256(example_model),
                    "version": "1",
                },
            },
        )
        wait_for("the init container to ask for the model", lambda: requested, timeout=120)
        asked = time.monotonic()
        # While the download is held back, neither the pod nor the resource is Ready.
        while time.monotonic() - asked < hold - 5:
            ready = models.condition("iris-http", "Ready")
            assert ready is None or ready["status"] != "True", ready
            for pod in models.pods("iris-http"):
                assert not any(c.ready for c in pod.status.container_statuses or [])
            time.sleep(1)
        models.wait_condition("iris-http", "Ready", timeout=180)
        assert time.monotonic() - asked >= hold
    assert requested == ["/iris/v1/model.joblib"]
    assert_pods_ready(models, "iris-http", 1)
    assert_serves(models, "iris-http", expected)


def test_pvc_model_is_mounted_read_only_and_served(
    models: Models, example_model: bytes, tmp_path: Path
) -> None:
    """pvc://CLAIM/path: a PersistentVolume (hostPath on the node) bound to a claim; the pod
    mounts it read-only and serves the file."""
    folder = tmp_path / "volume"
    (folder / "iris").mkdir(parents=True)
    folder.chmod(0o755)
    (folder / "iris").chmod(0o755)
    model_file = folder / "iris" / "model.joblib"
    model_file.write_bytes(example_model)
    model_file.chmod(0o644)
    volume = f"{models.namespace}-models"
    models.core.create_persistent_volume(
        client.V1PersistentVolume(
            metadata=client.V1ObjectMeta(name=volume),
            spec=client.V1PersistentVolumeSpec(
                capacity={"storage": "1Gi"},
                access_modes=["ReadOnlyMany"],
                storage_class_name="",
                persistent_volume_reclaim_policy="Retain",
                host_path=client.V1HostPathVolumeSource(path=str(folder), type="Directory"),
            ),
        )
    )
    try:
        models.core.create_namespaced_persistent_volume_claim(
            models.namespace,
            client.V1PersistentVolumeClaim(
                metadata=client.V1ObjectMeta(name="models"),
                spec=client.V1PersistentVolumeClaimSpec(
                    access_modes=["ReadOnlyMany"],
                    storage_class_name="",
                    volume_name=volume,
                    resources=client.V1VolumeResourceRequirements(requests={"storage": "1Gi"}),
                ),
            ),
        )
        models.create(
            "iris-pvc",
            {
                "model": {
                    "uri": "pvc://models/iris/model.joblib",
                    "digest": sha256(example_model),
                    "version": "1",
                }
            },
        )
        models.wait_condition("iris-pvc", "Ready", timeout=180)
        assert_pods_ready(models, "iris-pvc", 1)
        assert_serves(models, "iris-pvc", in_process(example_model))
        (pod,) = models.pods("iris-pvc")
        (volume_source,) = [v for v in pod.spec.volumes if v.persistent_volume_claim]
        assert volume_source.persistent_volume_claim.claim_name == "models"
        assert volume_source.persistent_volume_claim.read_only
    finally:
        models.core.delete_persistent_volume(volume)


def test_s3_model_is_fetched_with_the_credentials_secret_only_in_the_download_step(
    models: Models, example_model: bytes, node_ip: str
) -> None:
    """s3://bucket/key from an S3-compatible server (moto) on the node's network; the
    credentials and endpoint come from a Secret that only the download step sees."""
    import boto3  # noqa: PLC0415 - only this test needs it

    with s3_server(node_ip) as endpoint:
        keys = {"AWS_ACCESS_KEY_ID": "e2e-key", "AWS_SECRET_ACCESS_KEY": "e2e-secret"}
        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id=keys["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=keys["AWS_SECRET_ACCESS_KEY"],
        )
        s3.create_bucket(Bucket="models")
        s3.put_object(Bucket="models", Key="iris/v1/model.joblib", Body=example_model)
        models.core.create_namespaced_secret(
            models.namespace,
            client.V1Secret(
                metadata=client.V1ObjectMeta(name="s3-credentials"),
                string_data={
                    **keys,
                    "AWS_ENDPOINT_URL": endpoint,
                    "AWS_DEFAULT_REGION": "us-east-1",
                },
            ),
        )
        models.create(
            "iris-s3",
            {
                "model": {
                    "uri": "s3://models/iris/v1/model.joblib",
                    "digest": sha256(example_model),
                    "credentialsSecret": "s3-credentials",
                    "version": "1",
                }
            },
        )
        models.wait_condition("iris-s3", "Ready", timeout=180)
    assert_pods_ready(models, "iris-s3", 1)
    assert_serves(models, "iris-s3", in_process(example_model))
    (pod,) = models.pods("iris-s3")
    (fetch,) = pod.spec.init_containers
    assert [source.secret_ref.name for source in fetch.env_from] == ["s3-credentials"]
    (server,) = pod.spec.containers
    assert not server.env_from
    assert not any(var.value_from for var in server.env or [])


def test_wrong_digest_stalls_while_the_old_version_keeps_serving(
    models: Models, example_model: bytes
) -> None:
    expected = in_process(example_model)
    models.create(
        "iris-pinned",
        {"model": {"uri": FILE_URI, "digest": sha256(example_model), "version": "1"}},
    )
    models.wait_condition("iris-pinned", "Ready", timeout=180)
    old_pods = {p.metadata.name for p in models.pods("iris-pinned")}
    base = f"http://{models.cluster_ip('iris-pinned')}"
    wait_routed(f"{base}/v2/health/ready")

    wrong = "sha256:" + "0" * 64
    models.patch_spec("iris-pinned", {"model": {"digest": wrong, "version": "2"}})
    answers: list[int] = []

    def stalled() -> dict[str, Any] | None:
        status, body = http_json(f"{base}/v1/models/iris-pinned:predict", {"instances": ROWS})
        answers.append(status)
        assert status == 200, body
        assert body["predictions"] == expected
        cond = models.condition("iris-pinned", "Stalled")
        return cond if cond and cond["status"] == "True" else None

    cond = wait_for("Stalled=True", stalled, timeout=180, interval=1)
    assert cond["reason"] == "ModelLoadFailed", cond
    assert "digest mismatch" in cond["message"], cond
    assert wrong in cond["message"], cond

    ready = models.condition("iris-pinned", "Ready")
    assert ready is not None
    assert ready["status"] == "False"
    assert models.get("iris-pinned")["status"]["phase"] == "Degraded"

    # The old pod still serves; the new one crashes on the digest and never becomes ready.
    pods = models.pods("iris-pinned")
    new = [p for p in pods if p.metadata.name not in old_pods]
    assert {p.metadata.name for p in pods} >= old_pods
    assert new, "no pod of the new version was created"
    for pod in new:
        (server,) = pod.status.container_statuses
        assert not server.ready
        assert server.restart_count >= 1
        terminated = server.last_state.terminated
        assert terminated is not None
        assert "digest mismatch" in terminated.message
    for _ in range(5):
        status, body = http_json(f"{base}/v1/models/iris-pinned:predict", {"instances": ROWS})
        assert status == 200, body
        assert body["predictions"] == expected
    assert answers
    assert set(answers) == {200}


@pytest.mark.parametrize("protocol", ["v1", "v2"])
def test_bad_input_gets_a_json_error_through_the_service(
    models: Models, example_model: bytes, protocol: str
) -> None:
    """A bad request through the Service answers 400 and the pod keeps running."""
    name = f"iris-bad-{protocol}"
    models.create(name, {"model": {"uri": FILE_URI, "version": "1"}})
    models.wait_condition(name, "Ready", timeout=180)
    base = f"http://{models.cluster_ip(name)}"
    wait_routed(f"{base}/v2/health/ready")
    if protocol == "v1":
        status, body = http_json(f"{base}/v1/models/{name}:predict", {"instances": [[1.0]]})
    else:
        status, body = http_json(f"{base}/v2/models/{name}/infer", {"inputs": []})
    assert status == 400, body
    assert_pods_ready(models, name, 1)
    assert_serves(models, name, in_process(example_model))
