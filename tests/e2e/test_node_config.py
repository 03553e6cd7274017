"""The real node's generated configuration, checked without starting anything.

Runs in every ``pytest`` (no root, no binaries): it keeps the properties the e2e tests rely on
from regressing quietly, such as pods having no route off this machine.
"""

from __future__ import annotations

import ipaddress
import tomllib
from pathlib import Path

from localcluster import certs, components, coredns, gomod, images, nodeconfig, realnode

ROOT = Path("/srv/lc-root")  # never created: only paths are computed


def test_containerd_config_keeps_all_state_under_the_cluster_root() -> None:
    lay = nodeconfig.NodeLayout(ROOT)
    config = tomllib.loads(nodeconfig.containerd_config(lay))
    assert config["root"].startswith(str(ROOT))
    assert config["state"].startswith(str(ROOT))
    assert config["grpc"]["address"] == str(lay.containerd_sock)
    cri = config["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["sandbox_image"] == images.PAUSE_IMAGE
    assert cri["netns_mounts_under_state_dir"] is True
    assert cri["restrict_oom_score_adj"] is True
    assert cri["cni"]["conf_dir"].startswith(str(ROOT))
    runc = cri["containerd"]["runtimes"]["runc"]["options"]
    assert runc["SystemdCgroup"] is False
    assert runc["Root"].startswith(str(ROOT))


def test_pods_get_routes_to_pods_and_services_only() -> None:
    config = nodeconfig.cni_config(nodeconfig.NodeLayout(ROOT), components.SERVICE_CIDR)
    (bridge,) = config["plugins"]
    assert bridge["bridge"] == nodeconfig.BRIDGE
    assert bridge["ipMasq"] is False
    assert "isDefaultGateway" not in bridge
    assert bridge["ipam"]["routes"] == [{"dst": components.SERVICE_CIDR}]
    assert bridge["ipam"]["ranges"] == [
        [{"subnet": nodeconfig.POD_CIDR, "gateway": nodeconfig.NODE_IP}]
    ]


def test_kubelet_config_fits_this_host() -> None:
    ports = nodeconfig.NodePorts(1, 2, 3, 4, 5, 6, 7, 8)
    config = nodeconfig.kubelet_config(nodeconfig.NodeLayout(ROOT), ports, certs.Pki(ROOT / "pki"))
    assert config["cgroupDriver"] == "cgroupfs"
    assert config["failCgroupV1"] is False
    assert config["address"] == nodeconfig.NODE_IP
    assert config["healthzBindAddress"] == "127.0.0.1"
    assert config["readOnlyPort"] == 0
    assert config["authentication"]["anonymous"]["enabled"] is False
    assert config["imageGCHighThresholdPercent"] == 100
    assert config["podLogsDir"].startswith(str(ROOT))


def test_kube_proxy_opens_node_ports_on_the_bridge_only() -> None:
    config = nodeconfig.proxy_config(
        nodeconfig.NodeLayout(ROOT), nodeconfig.NodePorts(1, 2, 3, 4, 5, 6, 7, 8)
    )
    assert config["mode"] == "iptables"
    assert config["nodePortAddresses"] == [f"{nodeconfig.NODE_IP}/32"]
    assert config["iptables"]["localhostNodePorts"] is False
    assert config["healthzBindAddress"].startswith("127.0.0.1:")


def test_kube_router_enforces_policies_and_nothing_else() -> None:
    argv = nodeconfig.kube_router_cmd(
        Path("/bin/kube-router"), nodeconfig.NodeLayout(ROOT), "10.0.0.0/24"
    )
    for flag in ("--run-router=false", "--run-service-proxy=false", "--enable-cni=false"):
        assert flag in argv
    assert "--run-firewall=true" in argv
    assert "--health-port=0" in argv
    assert "--metrics-port=0" in argv


def test_metrics_api_points_at_the_node_address() -> None:
    objects = dict(nodeconfig.metrics_api_objects(4443))
    endpoints = objects["/api/v1/namespaces/kube-system/endpoints"]
    assert endpoints["subsets"][0]["addresses"] == [{"ip": nodeconfig.NODE_IP}]
    service = objects["/apis/apiregistration.k8s.io/v1/apiservices"]
    assert service["metadata"]["name"] == "v1beta1.metrics.k8s.io"


def test_build_context_hash_ignores_what_dockerignore_leaves_out(tmp_path: Path) -> None:
    (tmp_path / ".dockerignore").write_text("**/__pycache__\n**/*.joblib\nREADME.md\n")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text("x = 1\n")
    before = images.hash_tree(tmp_path)
    (tmp_path / "pkg" / "__pycache__").mkdir()
    (tmp_path / "pkg" / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"\0")
    (tmp_path / "pkg" / "model.joblib").write_bytes(b"weights")
    (tmp_path / "README.md").write_text("docs\n")
    assert images.hash_tree(tmp_path) == before
    (tmp_path / "pkg" / "mod.py").write_text("x = 2\n")
    assert images.hash_tree(tmp_path) != before


def test_upstream_requires_reads_blocks_and_single_lines() -> None:
    text = (
        "module example.com/m\n\ngo 1.21\n\nrequire example.com/a v1.0.0\n\n"
        "require (\n\texample.com/b v0.2.0 // indirect\n\texample.com/c v3.0.0+incompatible\n)\n"
    )
    assert gomod.upstream_requires(text) == {
        "example.com/a": "v1.0.0",
        "example.com/b": "v0.2.0",
        "example.com/c": "v3.0.0+incompatible",
    }


def test_pods_get_the_cluster_dns_service_as_nameserver() -> None:
    ports = nodeconfig.NodePorts(1, 2, 3, 4, 5, 6, 7, 8)
    config = nodeconfig.kubelet_config(nodeconfig.NodeLayout(ROOT), ports, certs.Pki(ROOT / "pki"))
    assert config["clusterDNS"] == [coredns.DNS_SERVICE_IP]
    assert config["clusterDomain"] == "cluster.local"
    assert ipaddress.ip_address(coredns.DNS_SERVICE_IP) in ipaddress.ip_network(
        components.SERVICE_CIDR
    )
    assert coredns.DNS_SERVICE_IP != components.SERVICE_IP


def test_corefile_serves_the_cluster_domain_on_the_node_address_only() -> None:
    text = coredns.corefile(
        bind=nodeconfig.NODE_IP,
        port=1053,
        health_port=8080,
        ready_port=8181,
        kubeconfig=ROOT / "coredns.kubeconfig",
    )
    assert text.splitlines()[1] == ".:1053 {"
    assert f"bind {nodeconfig.NODE_IP}" in text
    assert "health 127.0.0.1:8080" in text
    assert "ready 127.0.0.1:8181" in text
    assert f"kubeconfig {ROOT / 'coredns.kubeconfig'} coredns@localcluster" in text
    assert "kubernetes cluster.local in-addr.arpa ip6.arpa {" in text
    # Nothing leaves the machine: no upstream resolvers.
    assert "forward" not in text


def test_kube_dns_service_routes_to_the_coredns_process() -> None:
    objects = dict(coredns.api_objects(node_ip=nodeconfig.NODE_IP, port=1053))
    service = objects["/api/v1/namespaces/kube-system/services"]
    assert service["spec"]["clusterIP"] == coredns.DNS_SERVICE_IP
    assert "selector" not in service["spec"]  # the EndpointSlice below is its only endpoint
    slice_ = objects["/apis/discovery.k8s.io/v1/namespaces/kube-system/endpointslices"]
    assert slice_["metadata"]["labels"]["kubernetes.io/service-name"] == "kube-dns"
    assert slice_["endpoints"][0]["addresses"] == [nodeconfig.NODE_IP]
    # kube-proxy pairs Service and slice ports by name: each Service port has one.
    service_ports = {(p["name"], p["protocol"]) for p in service["spec"]["ports"]}
    slice_ports = {(p["name"], p["protocol"]) for p in slice_["ports"]}
    assert service_ports == slice_ports == {("dns", "UDP"), ("dns-tcp", "TCP")}
    assert {p["port"] for p in slice_["ports"]} == {1053}
    binding = objects["/apis/rbac.authorization.k8s.io/v1/clusterrolebindings"]
    assert binding["subjects"][0]["name"] == realnode.CLIENTS["coredns"][0]
    role = objects["/apis/rbac.authorization.k8s.io/v1/clusterroles"]
    verbs = {verb for rule in role["rules"] for verb in rule["verbs"]}
    assert verbs == {"list", "watch"}  # read-only
