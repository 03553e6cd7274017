"""The operator hands kopf the same credentials its own client uses (kube.credentials)."""

from __future__ import annotations

import pytest
from kubernetes import client

from modeldeploy import kube


def configuration(authorization: str | None) -> client.Configuration:
    config = client.Configuration()
    config.host = "https://10.0.0.1:443"
    if authorization is not None:
        config.api_key = {"authorization": authorization}
    return config


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer abc.def",  # what the kubeconfig loader stores
        "bearer abc.def",  # what the in-cluster loader stores (token file of a pod)
    ],
)
def test_the_token_is_passed_without_its_scheme(authorization: str) -> None:
    found = kube.credentials(configuration(authorization))
    assert found.token == "abc.def"
    assert found.server == "https://10.0.0.1:443"


@pytest.mark.parametrize("authorization", [None, "", "Basic dXNlcg==", "bearer "])
def test_no_bearer_token_means_none(authorization: str | None) -> None:
    assert kube.credentials(configuration(authorization)).token is None
