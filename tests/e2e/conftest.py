"""Fixtures for the end-to-end tests: a cluster with a real node, the operator, namespaces.

The session starts its own cluster (``localcluster`` with ``real_node=True``) in a temporary
root, or uses one that is already up with a real node under ``LOCALCLUSTER_E2E_ROOT`` (for
example ``.cluster`` after ``python -m localcluster up --real-node``), which it leaves running.
Binaries and images must be built first (``make e2e`` does it): a cold build takes far longer
than a test may.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

import localcluster
from integration.operator_support import fresh_namespace
from localcluster import binaries, images, nodeconfig

from .support import EXAMPLE_MODEL, Models, image_file, install_crd, operator_kubeconfig
from .support import operator_process as _operator_process

HERE = Path(__file__).parent


def _requested(config: pytest.Config) -> bool:
    """Only an explicit ask runs e2e tests: ``-m e2e``, a path in tests/e2e, or E2E=1.

    A plain ``pytest`` (what ``make test`` and CI run) would otherwise start a real node,
    which needs root and minutes of building first.
    """
    if os.environ.get("E2E", "").lower() in {"1", "true", "yes"}:
        return True
    markexpr = str(config.getoption("markexpr") or "")
    if re.search(r"(?<!not )\be2e\b", markexpr):
        return True
    paths = [Path(arg.split("::")[0]).resolve() for arg in config.args]
    return any(path == HERE or HERE in path.parents for path in paths)


#: Checks of the node's generated configuration: no node needed, so they always run.
_NO_NODE = {"test_node_config.py"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Everything under tests/e2e is an e2e test, skipped unless asked for."""
    wanted = _requested(config)
    skip = pytest.mark.skip(reason="e2e: needs a real node; run `make e2e` (or pytest -m e2e)")
    for item in items:
        if HERE in item.path.parents and item.path.name not in _NO_NODE:
            item.add_marker(pytest.mark.e2e)
            if not wanted:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[localcluster.Cluster]:
    """A cluster whose one node is real: containerd, kubelet, kube-proxy, metrics-server."""
    if os.geteuid() != 0:
        pytest.skip("the real node needs root")
    missing = [
        name
        for name, path in binaries.locate_all([b.name for b in binaries.known_binaries()]).items()
        if path is None
    ]
    if missing:
        pytest.fail(
            f"binaries not built ({', '.join(missing)}): run `make e2e` or "
            "`python -m localcluster build --real-node`",
            pytrace=False,
        )
    root_env = os.environ.get("LOCALCLUSTER_E2E_ROOT")
    root = Path(root_env) if root_env else tmp_path_factory.mktemp("e2e-cluster")
    c = localcluster.Cluster(root=root, real_node=True)
    if not c.is_up():
        try:
            images.require()
        except FileNotFoundError as err:
            pytest.fail(str(err), pytrace=False)
    started = c.up()
    yield c
    if started:
        c.down(keep_logs=True)


@pytest.fixture(scope="session")
def api_client(cluster: localcluster.Cluster) -> Iterator[client.ApiClient]:
    api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
    yield api
    api.close()


@pytest.fixture(scope="module")
def operator(
    cluster: localcluster.Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """The CRD installed and the operator running (as its ServiceAccount) for one test module.

    Per module, so that a module can run the operator another way (from manifests/, as a pod)
    without a second operator reconciling the same resources.
    """
    install_crd(cluster)
    folder = tmp_path_factory.mktemp("operator")
    kubeconfig = operator_kubeconfig(cluster, folder / "kubeconfig")
    log = cluster.layout.logs / "operator.log"
    with _operator_process(kubeconfig, log):
        yield


@pytest.fixture
def namespace(api_client: client.ApiClient, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards (its pods go with it)."""
    with fresh_namespace(api_client, request.node.name) as name:
        yield name


@pytest.fixture
def models(api_client: client.ApiClient, namespace: str, operator: None) -> Models:
    return Models(api_client, namespace)


@pytest.fixture(scope="session")
def server_archive(cluster: localcluster.Cluster) -> Path:
    """The OCI archive of the server image the node runs (imported at ``up``)."""
    return cluster.node_images()[images.SERVER_IMAGE]


@pytest.fixture(scope="session")
def example_model(server_archive: Path) -> bytes:
    """The bytes of the example model inside the image: what in-process predictions use."""
    return image_file(server_archive, EXAMPLE_MODEL)


@pytest.fixture(scope="session")
def node_ip() -> str:
    """Where a server the test starts is reachable from pods: the node's bridge address."""
    return nodeconfig.NODE_IP
