"""A real, offline Kubernetes control plane on 127.0.0.1 for tests and the demo.

etcd, kube-apiserver, kube-controller-manager, kube-scheduler and KWOK (fake nodes), built
from pinned Go modules (see ``versions.py``) because release downloads are not reachable.

    from localcluster import Cluster
    c = Cluster(root=".cluster-test")
    c.up()                       # idempotent; bounded waits; reports crashed components
    c.kubectl("get", "nodes")    # or use c.kubeconfig with any client
    c.down()                     # stops exactly what up started, removes the state
"""

from localcluster.binaries import BuildError, build, cache_root
from localcluster.cluster import (
    NODE_NAMES,
    Cluster,
    default_root,
    use_existing_requested,
)
from localcluster.errors import ClusterError, ComponentError, KubectlError
from localcluster.versions import ETCD_VERSION, KUBERNETES_VERSION, KWOK_VERSION

__all__ = [
    "ETCD_VERSION",
    "KUBERNETES_VERSION",
    "KWOK_VERSION",
    "NODE_NAMES",
    "BuildError",
    "Cluster",
    "ClusterError",
    "ComponentError",
    "KubectlError",
    "build",
    "cache_root",
    "default_root",
    "use_existing_requested",
]
