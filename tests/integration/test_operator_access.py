"""Who may call a model, through the operator on a real API server: the pods' account, the
token-review binding the operator grants with its own (least) RBAC, TLS in status, validation."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from modeldeploy import api

from .operator_support import (
    Models,
    crd_installed,  # noqa: F401 - fixture
    operator,  # noqa: F401 - fixture
    operator_kubeconfig,  # noqa: F401 - fixture
    wait_for,
)

pytestmark = pytest.mark.usefixtures("operator")

FILE_MODEL = {"uri": "file:///opt/models/iris/model.joblib"}


@pytest.fixture
def models(api_client: client.ApiClient, namespace: str) -> Models:
    return Models(api_client, namespace)


def _binding(api_client: client.ApiClient, name: str) -> client.V1ClusterRoleBinding | None:
    try:
        return client.RbacAuthorizationV1Api(api_client).read_cluster_role_binding(name)
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def _account(api_client: client.ApiClient, namespace: str, name: str) -> Any:
    try:
        return client.CoreV1Api(api_client).read_namespaced_service_account(name, namespace)
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def _may_review_tokens(api_client: client.ApiClient, user: str) -> bool:
    review = client.AuthorizationV1Api(api_client).create_subject_access_review(
        client.V1SubjectAccessReview(
            spec=client.V1SubjectAccessReviewSpec(
                user=user,
                groups=["system:serviceaccounts", "system:authenticated"],
                resource_attributes=client.V1ResourceAttributes(
                    group="authentication.k8s.io", resource="tokenreviews", verb="create"
                ),
            )
        )
    )
    return bool(review.status.allowed)


def test_auth_gives_the_pods_an_account_bound_to_review_tokens_and_takes_it_back(
    models: Models, api_client: client.ApiClient, namespace: str
) -> None:
    models.create(
        "guarded",
        {"model": FILE_MODEL, "auth": {"mode": "Kubernetes"}, "tls": {"secretName": "tls"}},
    )
    binding_name = f"modeldeploy:{namespace}:guarded"
    binding = wait_for("the token-review binding", lambda: _binding(api_client, binding_name))
    assert binding.role_ref.name == "modeldeploy-token-reviewer"
    assert [(s.kind, s.name, s.namespace) for s in binding.subjects] == [
        ("ServiceAccount", "guarded", namespace)
    ]
    account = wait_for("the account", lambda: _account(api_client, namespace, "guarded"))
    assert account.metadata.owner_references[0].kind == api.KIND
    template = wait_for("the Deployment", lambda: models.deployment("guarded")).spec.template
    assert template.spec.service_account_name == "guarded"
    assert template.spec.automount_service_account_token is True
    user = f"system:serviceaccount:{namespace}:guarded"
    assert _may_review_tokens(api_client, user)
    body = models.wait_condition("guarded", "Ready")
    assert body["status"]["url"].startswith("https://guarded.")

    models.patch_spec("guarded", {"auth": {"mode": "None"}})
    wait_for("binding removed", lambda: _binding(api_client, binding_name) is None)
    wait_for("account removed", lambda: _account(api_client, namespace, "guarded") is None)
    assert not _may_review_tokens(api_client, user)

    models.patch_spec("guarded", {"auth": {"mode": "Kubernetes"}})
    wait_for("binding back", lambda: _binding(api_client, binding_name))
    models.delete("guarded")
    wait_for(
        "binding removed with the resource", lambda: _binding(api_client, binding_name) is None
    )


def test_without_auth_there_is_no_account_and_no_binding(
    models: Models, api_client: client.ApiClient, namespace: str
) -> None:
    models.create("open", {"model": FILE_MODEL})
    models.wait_condition("open", "Ready")
    assert _binding(api_client, f"modeldeploy:{namespace}:open") is None
    assert _account(api_client, namespace, "open") is None
    deployment = models.deployment("open")
    assert deployment is not None
    assert deployment.spec.template.spec.automount_service_account_token is False
    assert models.get("open")["status"]["url"].startswith("http://open.")


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"auth": {"mode": "Basic"}}, "spec.auth.mode"),
        ({"tls": {}}, "spec.tls.secretName"),
        ({"tls": {"secretName": "Not_A_Name"}}, "spec.tls.secretName"),
        ({"server": {"rateLimit": {"requestsPerSecond": 0}}}, "spec.server.rateLimit"),
        ({"server": {"rateLimit": {"requestsPerSecond": 5, "burst": 0}}}, "spec.server.rateLimit"),
        ({"networkPolicy": {"allowMetricsFrom": [{}]}}, "spec.networkPolicy.allowMetricsFrom"),
    ],
    ids=["auth-mode", "tls-no-secret", "tls-bad-name", "rps-zero", "burst-zero", "metrics-peer"],
)
def test_api_server_rejects_bad_access_settings_naming_the_field(
    models: Models, spec: dict[str, Any], field: str
) -> None:
    with pytest.raises(ApiException) as caught:
        models.create("bad", {"model": FILE_MODEL, **spec})
    assert caught.value.status == 422, caught.value.body
    assert field in str(caught.value.body), caught.value.body
