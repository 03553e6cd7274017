"""The model server's bearer-token checks against a real kube-apiserver (TokenReview, RBAC).

ServiceAccounts get their tokens from the TokenRequest API; RBAC decides through Roles naming
`modeldeployments/predict`, exactly as a user grants access in a cluster.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import joblib
import pytest
import yaml
from kubernetes import client
from sklearn.linear_model import LogisticRegression

from server.support import IRIS_X, IRIS_Y, ServerProcess, free_port, post_json, request, v1_body

from .operator_support import fresh_namespace

MODEL = "iris"
PREDICT = f"/v1/models/{MODEL}:predict"


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "iris.joblib"
    joblib.dump(LogisticRegression(max_iter=500).fit(IRIS_X, IRIS_Y), path)
    return path


@pytest.fixture(scope="module")
def namespace(api_client: client.ApiClient) -> Iterator[str]:
    with fresh_namespace(api_client, "server-auth") as name:
        _grant(api_client, name)
        yield name


def _grant(api_client: client.ApiClient, namespace: str) -> None:
    """ServiceAccounts `caller` (may predict on the model), `stranger` (may not), and a Role as
    the README tells users to write it."""
    core = client.CoreV1Api(api_client)
    rbac = client.RbacAuthorizationV1Api(api_client)
    for name in ("caller", "stranger"):
        core.create_namespaced_service_account(
            namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=name))
        )
    rbac.create_namespaced_role(
        namespace,
        client.V1Role(
            metadata=client.V1ObjectMeta(name="predict-iris"),
            rules=[
                client.V1PolicyRule(
                    api_groups=["serving.modeldeploy.io"],
                    resources=["modeldeployments/predict"],
                    resource_names=[MODEL],
                    verbs=["create"],
                )
            ],
        ),
    )
    bind(api_client, namespace, "caller-predicts", "caller")


def bind(api_client: client.ApiClient, namespace: str, name: str, account: str) -> None:
    """A RoleBinding of the predict Role to the ServiceAccount."""
    client.RbacAuthorizationV1Api(api_client).create_namespaced_role_binding(
        namespace,
        client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name=name),
            role_ref=client.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="Role", name="predict-iris"
            ),
            subjects=[
                client.RbacV1Subject(kind="ServiceAccount", name=account, namespace=namespace)
            ],
        ),
    )


def token(api_client: client.ApiClient, namespace: str, account: str) -> str:
    """A fresh token of the ServiceAccount (each call a different one)."""
    answer = client.CoreV1Api(api_client).create_namespaced_service_account_token(
        account,
        namespace,
        client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600)
        ),
    )
    return str(answer.status.token)


@contextlib.contextmanager
def _running(
    model_file: Path, tmp: Path, kubeconfig: Path, namespace: str, *args: str
) -> Iterator[ServerProcess]:
    """A server checking tokens against the cluster of `kubeconfig`, ready; stopped after."""
    process = ServerProcess(
        model_file,
        tmp,
        name=MODEL,
        args=("--auth", "kubernetes", "--auth-namespace", namespace, *args),
        env={"KUBECONFIG": str(kubeconfig)},
    ).start()
    try:
        yield process.wait_ready()
    finally:
        process.stop()


class Setup(NamedTuple):
    """What the tests that start their own server need."""

    model_file: Path
    kubeconfig: Path
    namespace: str
    api_client: client.ApiClient


@pytest.fixture
def setup(
    model_file: Path, kubeconfig: Path, namespace: str, api_client: client.ApiClient
) -> Setup:
    return Setup(model_file, kubeconfig, namespace, api_client)


@pytest.fixture(scope="module")
def server(
    model_file: Path, kubeconfig: Path, namespace: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    with _running(model_file, tmp_path_factory.mktemp("auth"), kubeconfig, namespace) as process:
        yield process


def _predict(port: int, bearer: str | None) -> tuple[int, dict[str, str], dict[str, object]]:
    headers = {} if bearer is None else {"Authorization": f"Bearer {bearer}"}
    answer = post_json(port, PREDICT, v1_body(IRIS_X[:2]), headers=headers)
    return answer.status, answer.headers, json.loads(answer.body)


def _reviews(port: int, outcome: str) -> float:
    text = request(port, "GET", "/metrics").body.decode()
    match = re.search(
        rf'^modelserver_auth_reviews_total\{{model="{MODEL}",outcome="{outcome}"\}} (\S+)$',
        text,
        re.MULTILINE,
    )
    return float(match.group(1)) if match else 0.0


def test_bound_service_account_predicts(
    server: ServerProcess, api_client: client.ApiClient, namespace: str
) -> None:
    status, _, body = _predict(server.port, token(api_client, namespace, "caller"))
    assert status == 200
    assert body == {"predictions": [0, 0]}


def test_service_account_without_the_role_is_forbidden(
    server: ServerProcess, api_client: client.ApiClient, namespace: str
) -> None:
    status, headers, body = _predict(server.port, token(api_client, namespace, "stranger"))
    assert status == 403
    assert headers["content-type"] == "application/json"
    assert f"system:serviceaccount:{namespace}:stranger may not create" in str(body["error"])
    # Metadata (library versions, the model's digest) is protected like predict.
    stranger = token(api_client, namespace, "stranger")
    answer = request(
        server.port, "GET", f"/v2/models/{MODEL}", headers={"Authorization": f"Bearer {stranger}"}
    )
    assert answer.status == 403


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer", "Bearer not-a-token", "Basic dXNlcjpwYXNz", "Bearer two words"],
)
def test_missing_or_invalid_token_is_401_with_a_bearer_challenge(
    server: ServerProcess, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    answer = post_json(server.port, PREDICT, v1_body(IRIS_X[:1]), headers=headers)
    assert answer.status == 401
    assert answer.headers["www-authenticate"].startswith("Bearer")
    assert "token" in answer.json()["error"]


def test_health_and_metrics_need_no_token(server: ServerProcess) -> None:
    for path in ("/v2/health/live", "/v2/health/ready", f"/v2/models/{MODEL}/ready", "/metrics"):
        assert request(server.port, "GET", path).status == 200, path
    assert request(server.port, "GET", f"/v2/models/{MODEL}").status == 401


def test_decisions_are_cached_bounded_and_expire(setup: Setup, tmp_path: Path) -> None:
    model_file, kubeconfig, namespace, api_client = setup
    with _running(
        model_file,
        tmp_path,
        kubeconfig,
        namespace,
        "--auth-allow-ttl",
        "2",
        "--auth-cache-size",
        "2",
    ) as server:
        first = token(api_client, namespace, "caller")
        for _ in range(10):
            assert _predict(server.port, first)[0] == 200
        assert _reviews(server.port, "allowed") == 1  # cached: one review for ten requests
        time.sleep(2.2)
        assert _predict(server.port, first)[0] == 200
        assert _reviews(server.port, "allowed") == 2  # expired after the allow TTL
        # Three tokens through a cache of two, in turn: each is dropped before it comes back.
        tokens = [token(api_client, namespace, "caller") for _ in range(3)]
        for bearer in tokens * 2:
            assert _predict(server.port, bearer)[0] == 200
        assert _reviews(server.port, "allowed") == 8
        # Refusals are cached too, but briefly (the deny TTL, 5 s by default).
        stranger = token(api_client, namespace, "stranger")
        for _ in range(5):
            assert _predict(server.port, stranger)[0] == 403
        assert _reviews(server.port, "denied") == 1


def test_revoked_binding_is_refused_once_the_allow_ttl_passed(setup: Setup, tmp_path: Path) -> None:
    model_file, kubeconfig, namespace, api_client = setup
    bind(api_client, namespace, "temporary", "stranger")
    with _running(model_file, tmp_path, kubeconfig, namespace, "--auth-allow-ttl", "1") as server:
        bearer = token(api_client, namespace, "stranger")
        assert _predict(server.port, bearer)[0] == 200
        client.RbacAuthorizationV1Api(api_client).delete_namespaced_role_binding(
            "temporary", namespace
        )
        time.sleep(1.2)
        assert _predict(server.port, bearer)[0] == 403


def _kubeconfig_with(
    admin: Path, target: Path, *, server: str | None, token_of: str | None
) -> Path:
    """A JSON kubeconfig (the server reads JSON without PyYAML) for the admin's cluster, pointed
    elsewhere or authenticating with another token."""
    document = yaml.safe_load(admin.read_text())
    if server is not None:
        document["clusters"][0]["cluster"]["server"] = server
    if token_of is not None:
        document["users"][0]["user"] = {"token": token_of}
    target.write_text(json.dumps(document))
    return target


def test_api_server_outage_is_503_never_200(setup: Setup, tmp_path: Path) -> None:
    model_file, kubeconfig, namespace, api_client = setup
    dead = _kubeconfig_with(
        kubeconfig, tmp_path / "dead.json", server=f"https://127.0.0.1:{free_port()}", token_of=None
    )
    with _running(model_file, tmp_path, dead, namespace) as server:
        bearer = token(api_client, namespace, "caller")
        for _ in range(3):  # outages are not cached: every attempt asks again, none passes
            status, headers, body = _predict(server.port, bearer)
            assert status == 503
            assert headers["retry-after"] == "1"
            assert "could not review the token" in str(body["error"])
        assert _reviews(server.port, "error") == 3
        assert _predict(server.port, None)[0] == 401  # no token needs no API server


def test_server_without_rights_to_review_tokens_is_503(setup: Setup, tmp_path: Path) -> None:
    model_file, kubeconfig, namespace, api_client = setup
    # Credentials the API server accepts but RBAC gives no TokenReview: a misconfigured pod.
    powerless = _kubeconfig_with(
        kubeconfig,
        tmp_path / "powerless.json",
        server=None,
        token_of=token(api_client, namespace, "stranger"),
    )
    with _running(model_file, tmp_path, powerless, namespace) as server:
        status, _, _ = _predict(server.port, token(api_client, namespace, "caller"))
        assert status == 503
        assert "answered 403" in server.log_text()
