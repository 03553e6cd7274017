"""Fixtures for tests that need a real Kubernetes API server.

One local control plane (etcd, kube-apiserver, controller-manager, scheduler, KWOK) per test
session, in its own temporary root so it never clashes with a developer's
``make cluster-up`` (``.cluster/``). With ``LOCALCLUSTER_USE_EXISTING=1`` (or
``USE_EXISTING_CLUSTER=true``) and ``KUBECONFIG`` set, the tests use that cluster instead.
``LOCALCLUSTER_TEST_ROOT`` pins the root (to keep logs somewhere known).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

import localcluster
from localcluster import binaries

from .operator_support import fresh_namespace

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/integration is an integration test."""
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[localcluster.Cluster]:
    """The session's cluster: started once, stopped at the end (logs kept in its root)."""
    root_env = os.environ.get("LOCALCLUSTER_TEST_ROOT")
    root = Path(root_env) if root_env else tmp_path_factory.mktemp("localcluster")
    c = localcluster.Cluster(root=root)
    if not c.use_existing:
        # Building takes minutes: far over the per-test timeout, so ask for it up front.
        missing = [name for name, path in binaries.locate_all().items() if path is None]
        if missing:
            pytest.fail(
                f"control-plane binaries not built ({', '.join(missing)}): "
                "run `make binaries` first",
                pytrace=False,
            )
    started = c.up()
    yield c
    if started:
        c.down(keep_logs=True)


@pytest.fixture(scope="session")
def kubeconfig(cluster: localcluster.Cluster) -> Path:
    """Path of an admin kubeconfig for the session's cluster."""
    return cluster.kubeconfig


@pytest.fixture(scope="session")
def api_client(kubeconfig: Path) -> Iterator[client.ApiClient]:
    """An official-client ApiClient bound to the session's cluster (not the global config)."""
    api = config.new_client_from_config(config_file=str(kubeconfig))
    yield api
    api.close()


@pytest.fixture
def namespace(api_client: client.ApiClient, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace named after the test; deleted afterwards (without waiting)."""
    with fresh_namespace(api_client, request.node.name) as name:
        yield name
