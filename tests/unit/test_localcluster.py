"""The local cluster harness' pure parts: its typed state and its table of node components.

No cluster, no root: these check what ``up`` records and in which order it would start and
stop things, so a refactoring of the harness cannot change either silently.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

from localcluster import binaries, certs, components, host, oci, process, realnode, state
from localcluster.backend import Start
from localcluster.local import LocalCluster
from localcluster.nodeconfig import NodePorts
from localcluster.realnode import RealNode

ROOT = Path("/srv/lc-root")  # never created: only paths are computed


def _state(**extra: object) -> state.State:
    return state.State(
        server="https://127.0.0.1:6443",
        ports=components.Ports(1, 2, 3, 4, 5, 6),
        kubeconfig=str(ROOT / "kubeconfig"),
        components=components.ORDER,
        versions={"kubernetes": "v1.34.4"},
        processes={"etcd": process.Record("etcd", 42, 1.5, "/bin/etcd")},
        **extra,  # type: ignore[arg-type]
    )


def test_state_round_trips_through_its_json(tmp_path: Path) -> None:
    undo = host.HostUndo(sysctls={"net/ipv4/ip_forward": "0"}, propagation="private", bridge=True)
    saved = _state(
        real_node=True,
        node_ports=NodePorts(*range(10, 18)),
        images={"pause": "/cache/pause.oci.tar"},
        host=undo,
    )
    path = tmp_path / "state.json"
    state.save(path, saved)
    assert state.load(path) == saved
    data = json.loads(path.read_text())
    # The layout earlier versions wrote, so `down` of a newer harness stops an older cluster.
    assert data["processes"]["etcd"] == {
        "name": "etcd",
        "pid": 42,
        "create_time": 1.5,
        "argv0": "/bin/etcd",
    }
    assert data["host"]["sysctls"] == {"net/ipv4/ip_forward": "0"}
    assert data["node_ports"]["coredns"] == 15


def test_a_kwok_state_records_no_node_fields(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    state.save(path, _state())
    data = json.loads(path.read_text())
    assert data["real_node"] is False
    assert not {"node_ports", "images", "host"} & set(data)


def test_an_old_state_without_components_means_the_kwok_set(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    data = _state().to_json()
    del data["components"]
    path.write_text(json.dumps(data))
    loaded = state.load(path)
    assert loaded is not None
    assert loaded.components == components.ORDER


def test_unreadable_state_is_no_state(tmp_path: Path) -> None:
    assert state.load(tmp_path / "missing.json") is None
    (tmp_path / "bad.json").write_text("{not json")
    assert state.load(tmp_path / "bad.json") is None


def test_every_node_component_runs_a_binary_the_harness_builds() -> None:
    known = {b.name for b in binaries.known_binaries()}
    for component in realnode.COMPONENTS:
        assert component.binary is None or component.binary in known, component.name
    assert set(RealNode.binaries) <= known
    assert "coredns" in RealNode.binaries


def test_containerd_stops_last_so_pods_are_removed_through_it() -> None:
    assert [c.name for c in realnode.COMPONENTS if c.stop_last] == ["containerd"]
    names = [c.name for c in realnode.COMPONENTS]
    # The kubelet needs containerd; kube-proxy and CoreDNS need the node; CoreDNS is the add-on.
    assert names.index("containerd") < names.index("kubelet") < names.index("kube-proxy")
    assert names[-1] == "coredns"


def test_node_components_render_their_files_under_the_cluster_root() -> None:
    plane = LocalCluster(
        ROOT, RealNode(), kind_of=lambda _: RealNode(), build_missing=False, log=print
    )
    start = Start(
        plane,
        _state(),
        components.Ports(1, 2, 3, 4, 5, 6),
        NodePorts(*range(10, 18)),
        "https://127.0.0.1:6443",
        certs.Pki(ROOT / "pki"),
        {name: Path(f"/bin/{name}") for name in RealNode.binaries},
        [],
        0.0,
    )
    files = {path: text for c in realnode.COMPONENTS for path, text in c.files(start).items()}
    assert files, "no files rendered"
    assert all(ROOT in path.parents for path in files)
    corefile = files[plane.node_layout.corefile]
    assert ".:15 {" in corefile  # NodePorts.coredns
    kubelet = json.loads(files[plane.node_layout.kubelet_config])
    assert kubelet["clusterDNS"] == ["10.0.0.10"]
    argv = {c.name: c.command(start) for c in realnode.COMPONENTS}
    assert argv["coredns"] == ["/bin/coredns", "-conf", str(plane.node_layout.corefile)]
    assert argv["kubelet"][0] == "/bin/kubelet"


def test_oci_archive_is_deterministic_and_names_the_image(tmp_path: Path) -> None:
    (tmp_path / "rootfs").mkdir()
    (tmp_path / "rootfs" / "hello").write_text("hi\n")
    layer = tmp_path / "layer.tar"
    with tarfile.open(layer, "w") as tar:
        tar.add(tmp_path / "rootfs" / "hello", arcname="hello")
    archives = [tmp_path / "a.oci.tar", tmp_path / "b.oci.tar"]
    for dest in archives:
        oci.write_archive(
            dest, "localhost/x/y:1.0", layer, {"Cmd": ["/hello"]}, "2026-01-01T00:00:00Z"
        )
    assert archives[0].read_bytes() == archives[1].read_bytes()
    with tarfile.open(archives[0]) as tar:
        index = json.loads(_member(tar, "index.json"))
        (desc,) = index["manifests"]
        assert desc["annotations"]["io.containerd.image.name"] == "localhost/x/y:1.0"
        manifest = json.loads(_member(tar, "blobs/sha256/" + desc["digest"].split(":")[1]))
        (layer_desc,) = manifest["layers"]
        assert layer_desc["digest"] == "sha256:" + oci.sha256_file(layer)
        assert _member(tar, "blobs/sha256/" + oci.sha256_file(layer)) == layer.read_bytes()


def _member(tar: tarfile.TarFile, name: str) -> bytes:
    fh = tar.extractfile(name)
    assert fh is not None
    return fh.read()


def test_each_node_client_is_its_own_identity_and_none_is_a_node_admin_by_accident() -> None:
    names = [cn for cn, _ in realnode.CLIENTS.values()]
    assert len(names) == len(set(names))
    assert realnode.CLIENTS["kubelet"] == ("system:node:localcluster-node", "system:nodes")
    # kube-proxy and CoreDNS get their rights from RBAC, not from system:masters.
    assert realnode.CLIENTS["kube-proxy"][1] is None
    assert realnode.CLIENTS["coredns"][1] is None
