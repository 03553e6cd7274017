"""Bring a whole local control plane up and down: the object tests and the CLI use.

``up`` is idempotent (a running cluster is left alone), bounded (every wait has a timeout)
and loud when something breaks (a component that exits during startup is reported with the
tail of its log). ``down`` stops only the processes recorded in the cluster's
``state.json`` and removes the directory only if it carries our marker file.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from localcluster import (
    binaries,
    certs,
    components,
    coredns,
    images,
    kubeconfig,
    kwokconfig,
    node,
    process,
    versions,
)
from localcluster.api import ApiClient
from localcluster.components import Layout, Ports
from localcluster.node import NodeLayout, NodePorts

Log = Callable[[str], None]

NODE_NAMES = ("kwok-node-0", "kwok-node-1")
REAL_NODE_NAME = node.NODE_NAME
#: A real node replaces KWOK: with fake nodes beside it, model pods could land on a node that
#: reports them Ready without running them, and Service endpoints would point at nothing.
REAL_NODE_ORDER = (*components.CONTROL_PLANE, *node.ORDER)
DEFAULT_TIMEOUT = 180.0
#: Importing the server image into containerd and a first pod sandbox take a while.
REAL_NODE_TIMEOUT = 420.0
EXISTING_ENV_VARS = ("LOCALCLUSTER_USE_EXISTING", "USE_EXISTING_CLUSTER")
_TRUE = {"1", "true", "yes", "on"}
_MARKER_TEXT = "state of `python -m localcluster`; removed by `down`\n"

_COMMANDS: dict[str, Callable[[Path, Layout, Ports], list[str]]] = {
    "etcd": components.etcd,
    "kube-apiserver": components.kube_apiserver,
    "kube-controller-manager": components.kube_controller_manager,
    "kube-scheduler": components.kube_scheduler,
    "kwok": components.kwok,
}


class ClusterError(RuntimeError):
    """The cluster could not be started, reached or stopped."""


class ComponentError(ClusterError):
    """A component exited while we waited for it; the message has its log tail."""

    def __init__(self, component: str, log_path: Path, detail: str = "") -> None:
        self.component = component
        self.log_path = log_path
        self.tail = process.log_tail(log_path)
        why = f" ({detail})" if detail else ""
        super().__init__(f"{component} is not running{why}; last lines of {log_path}:\n{self.tail}")


class KubectlError(ClusterError):
    """kubectl exited non-zero; unlike CalledProcessError, the message shows its stderr."""

    def __init__(self, result: subprocess.CompletedProcess[str]) -> None:
        self.result = result
        cmd = " ".join(map(str, result.args))
        super().__init__(f"`{cmd}` exited {result.returncode}: {result.stderr.strip()}")


def use_existing_requested() -> bool:
    """True if the environment asks to use ``KUBECONFIG``'s cluster instead of starting one."""
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in EXISTING_ENV_VARS)


def repo_root() -> Path:
    """The checkout we run in: the nearest parent of the cwd holding ``hack/localcluster``.

    Falls back to the package's own checkout, so ``python -m localcluster`` from anywhere
    inside (or outside) a clone finds the right ``.cluster/``.
    """
    here = Path.cwd().resolve()
    for d in (here, *here.parents):
        if (d / "pyproject.toml").is_file() and (d / "hack" / "localcluster").is_dir():
            return d
    return Path(__file__).resolve().parents[2]


def default_root() -> Path:
    env = os.environ.get("LOCALCLUSTER_ROOT")
    return Path(env) if env else repo_root() / ".cluster"


def stderr_log(msg: str) -> None:
    binaries.stderr_log(msg)


@dataclass(frozen=True)
class ComponentStatus:
    name: str
    pid: int | None
    running: bool
    log: Path


@dataclass(frozen=True)
class Status:
    root: Path
    existing: bool
    kubeconfig: Path
    server: str | None
    components: tuple[ComponentStatus, ...]
    ready: bool
    nodes_ready: int

    @property
    def up(self) -> bool:
        return self.existing or (bool(self.components) and all(c.running for c in self.components))


class Cluster:
    """A local control plane under ``root`` (or, in existing mode, ``KUBECONFIG``'s cluster).

    >>> c = Cluster(root=tmp_path / "cluster")   # doctest: +SKIP
    >>> c.up(); c.kubectl("get", "nodes"); c.down()  # doctest: +SKIP
    """

    def __init__(
        self,
        root: Path | str | None = None,
        *,
        use_existing: bool | None = None,
        build_missing: bool = False,
        real_node: bool = False,
        log: Log = stderr_log,
    ) -> None:
        self.root = Path(root).resolve() if root is not None else default_root().resolve()
        self.layout = Layout(self.root)
        self.node_layout = NodeLayout(self.root)
        self.real_node = real_node
        self.use_existing = use_existing_requested() if use_existing is None else use_existing
        self.build_missing = build_missing
        self.log = log
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._started_here = False

    # -- where things are ------------------------------------------------------------------

    @property
    def kubeconfig(self) -> Path:
        """Admin kubeconfig (in existing mode: the first file of ``$KUBECONFIG``)."""
        if self.use_existing:
            env = os.environ.get("KUBECONFIG", "")
            first = env.split(os.pathsep)[0] if env else ""
            if not first:
                raise ClusterError(f"{' or '.join(EXISTING_ENV_VARS)} is set but KUBECONFIG is not")
            return Path(first).expanduser()
        return self.layout.kubeconfig

    @property
    def bin_dir(self) -> Path:
        """A directory with every binary found (symlinks), for PATH or for tests.

        Binaries come from different places (the version cache, LOCALCLUSTER_BIN_DIR), so
        they are linked together under ``<root>/bin``.
        """
        if not self.layout.root.exists():
            # Mark it ours, or a later `up` would refuse the non-empty directory.
            self.layout.root.mkdir(parents=True)
            self.layout.marker.write_text(_MARKER_TEXT)
        d = self.layout.bin
        d.mkdir(parents=True, exist_ok=True)
        everything = [b.name for b in binaries.known_binaries()]
        for name, path in binaries.locate_all(everything).items():
            if path is None:
                continue
            link = d / name
            if link.is_symlink() or link.exists():
                if link.resolve() == path.resolve():
                    continue
                link.unlink()
            link.symlink_to(path)
        return d

    @property
    def server(self) -> str:
        state = self._load_state()
        if state is None:
            raise ClusterError(f"no cluster running under {self.root}")
        return str(state["server"])

    def env(self) -> dict[str, str]:
        """Environment for tools that should talk to this cluster (kubectl, the operator)."""
        return {
            "KUBECONFIG": str(self.kubeconfig),
            "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    def kubectl(
        self,
        *args: str,
        check: bool = True,
        input: str | None = None,
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl (ours, else the one on PATH) against this cluster.

        Raises KubectlError when it fails and ``check`` is true.
        """
        found = binaries.locate_all(["kubectl"]).get("kubectl")
        exe = str(found) if found else shutil.which("kubectl")
        if exe is None:
            raise ClusterError("kubectl not found: run `make binaries`")
        env = dict(os.environ, KUBECONFIG=str(self.kubeconfig))
        result = subprocess.run(
            [exe, *args],
            check=False,
            capture_output=True,
            text=True,
            input=input,
            env=env,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise KubectlError(result)
        return result

    def client(self) -> ApiClient:
        """A stdlib client authenticated as admin (not available in existing mode)."""
        if self.use_existing:
            raise ClusterError("the built-in client needs our own PKI; use KUBECONFIG instead")
        pki = certs.Pki(self.layout.pki)
        return ApiClient(
            self.server,
            ca_cert=pki.ca_cert,
            client_cert=pki.client_cert("admin"),
            client_key=pki.client_key("admin"),
        )

    # -- state -----------------------------------------------------------------------------

    def _load_state(self) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(self.layout.state.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return data

    def _save_state(self, state: Mapping[str, Any]) -> None:
        tmp = self.layout.state.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.layout.state)

    def _records(self, state: Mapping[str, Any] | None = None) -> dict[str, process.Record]:
        state = state if state is not None else self._load_state()
        if not state:
            return {}
        return {name: process.Record.from_json(rec) for name, rec in state["processes"].items()}

    @staticmethod
    def _expected(state: Mapping[str, Any] | None) -> tuple[str, ...]:
        """The components a cluster runs: recorded at start (older states: the KWOK set)."""
        if state and state.get("components"):
            return tuple(state["components"])
        return components.ORDER

    def is_up(self) -> bool:
        """Every recorded component is alive (existing mode: trusted to be up)."""
        if self.use_existing:
            return True
        state = self._load_state()
        recs = self._records(state)
        expected = set(self._expected(state))
        return bool(recs) and set(recs) == expected and all(map(process.alive, recs.values()))

    def node_images(self) -> dict[str, Path]:
        """Image name -> OCI archive that the running real node imported (empty without one)."""
        state = self._load_state()
        return {k: Path(v) for k, v in ((state or {}).get("images") or {}).items()}

    def has_real_node(self) -> bool:
        """Whether the cluster under root was started with ``real_node``."""
        state = self._load_state()
        return bool(state and state.get("real_node"))

    # -- up --------------------------------------------------------------------------------

    def up(self, timeout: float | None = None) -> bool:
        """Start the cluster; False if it was already up (or is an existing one).

        With ``real_node``, also build (or reuse) the node's images, then start containerd,
        the kubelet, kube-proxy and metrics-server instead of KWOK.
        """
        if self.use_existing:
            kc = self.kubeconfig
            if not kc.is_file():
                raise ClusterError(f"KUBECONFIG {kc} does not exist")
            self.log(f"using the existing cluster of {kc}; nothing to start")
            return False
        if self.is_up():
            if self.real_node and not self.has_real_node():
                raise ClusterError(
                    f"the cluster under {self.root} is up without a real node; `down` it first"
                )
            kind = " with a real node" if self.has_real_node() else ""
            self.log(f"cluster already up{kind} under {self.root} (kubeconfig {self.kubeconfig})")
            return False
        if self._records():
            dead = [n for n, r in self._records().items() if not process.alive(r)]
            self.log(f"stale cluster under {self.root} ({', '.join(dead)} not running): cleaning")
            self.down()

        bins, built = self._inputs()
        if timeout is None:
            timeout = REAL_NODE_TIMEOUT if self.real_node else DEFAULT_TIMEOUT

        for attempt in (1, 2):
            try:
                self._start(bins, timeout, built)
            except ComponentError as err:
                self._abort()
                if attempt == 1 and "address already in use" in err.tail:
                    self.log(f"{err.component}: a port was taken meanwhile; retrying once")
                    continue
                raise
            except BaseException:
                self._abort()
                raise
            return True
        raise AssertionError("unreachable")

    def _inputs(self) -> tuple[dict[str, Path], list[images.Image]]:
        """Binaries (and with a real node, images) to start from: found, built, or an error."""
        names = [*components.ORDER, "kubectl"]
        if self.real_node:
            node.check_host()
            names = [*components.CONTROL_PLANE, "kubectl", *binaries.NODE_BINARY_NAMES]
        if self.build_missing:
            bins = binaries.build(names, verbose=False, log=self.log)
        else:
            bins = binaries.require(names)
        built: list[images.Image] = []
        if self.real_node:
            built = images.build_all(self.log) if self.build_missing else images.require()
        return bins, built

    def _prepare_root(self) -> None:
        lay = self.layout
        if lay.root.exists() and any(lay.root.iterdir()):
            if not lay.marker.exists():
                raise ClusterError(
                    f"{lay.root} exists, is not empty and was not made by localcluster"
                )
            shutil.rmtree(lay.root)
        lay.root.mkdir(parents=True, exist_ok=True)
        lay.marker.write_text(_MARKER_TEXT)

    def _start(self, bins: Mapping[str, Path], timeout: float, built: list[images.Image]) -> None:
        t0 = time.monotonic()
        deadline = t0 + timeout
        lay = self.layout
        if self.real_node:
            self._claim_node()
        self._prepare_root()
        free = process.free_ports(14)
        ports, node_ports = Ports(*free[:6]), NodePorts(*free[6:])
        server = f"https://127.0.0.1:{ports.apiserver}"
        state = self._new_state(server, ports, node_ports, built)
        self._save_state(state)
        pki = self._write_files(server, ports, node_ports)

        def launch(name: str) -> None:
            if name in node.ORDER:
                argv = self._node_command(name, bins, node_ports, pki, ports.apiserver)
                self._launch(name, argv, node.env(), state)
            else:
                self._launch(name, *self._control_plane_command(name, bins, ports), state)

        self.log(f"starting etcd {versions.ETCD_VERSION} on 127.0.0.1:{ports.etcd_client}")
        launch("etcd")
        etcd = ApiClient(f"http://127.0.0.1:{ports.etcd_client}")
        self._wait("etcd healthy", lambda: etcd.ok("/health"), deadline)

        self.log(f"starting kube-apiserver {versions.KUBERNETES_VERSION} on {server}")
        launch("kube-apiserver")
        api = self.client()
        self._wait("kube-apiserver /readyz", lambda: api.ok("/readyz"), deadline)

        rest: tuple[str, ...] = ("kube-controller-manager", "kube-scheduler")
        if not self.real_node:
            rest += ("kwok",)
        self.log(f"starting {', '.join(rest)}")
        for name in rest:
            launch(name)
        if not self.real_node:
            self._create_kwok_nodes(api)

        kcm = ApiClient(f"https://127.0.0.1:{ports.controller_manager}", verify=False)
        sched = ApiClient(f"https://127.0.0.1:{ports.scheduler}", verify=False)
        self._wait("kube-controller-manager /healthz", lambda: kcm.ok("/healthz"), deadline)
        self._wait("kube-scheduler /healthz", lambda: sched.ok("/healthz"), deadline)
        if self.real_node:
            self._start_node(
                launch, state=state, api=api, ports=node_ports, built=built, deadline=deadline
            )
        else:
            kwok = ApiClient(f"http://127.0.0.1:{ports.kwok}")
            self._wait("kwok /healthz", lambda: kwok.ok("/healthz"), deadline)
            self._wait("nodes Ready and untainted", lambda: self._nodes_ready(api), deadline)
        self._wait(
            "ServiceAccount default/default",
            lambda: api.ok("/api/v1/namespaces/default/serviceaccounts/default"),
            deadline,
        )
        self.log(
            f"cluster up in {time.monotonic() - t0:.1f}s; "
            f"export KUBECONFIG={lay.kubeconfig}  (logs in {lay.logs})"
        )

    def _claim_node(self) -> None:
        """Take the machine's real-node slot; first clean up after a holder that died."""
        holder = node.claim_holder()
        if holder is not None and holder != self.root:
            stale = Cluster(holder, log=self.log)
            if not stale.is_up() and stale.has_real_node():
                self.log(f"a real node under {holder} died: cleaning up after it")
                stale.down(keep_logs=True)
        node.claim(self.root, lambda root: Cluster(root, log=self.log).is_up())

    def _launch(
        self, name: str, argv: list[str], env: Mapping[str, str], state: dict[str, Any]
    ) -> None:
        """Start one component and record it in state.json at once (``down`` finds it)."""
        lay = self.layout
        proc, rec = process.start(name, argv, lay.log(name), env=env, cwd=lay.root)
        self._children[name] = proc
        state["processes"][name] = rec.to_json()
        self._save_state(state)

    def _new_state(
        self, server: str, ports: Ports, node_ports: NodePorts, built: list[images.Image]
    ) -> dict[str, Any]:
        state: dict[str, Any] = {
            "versions": {
                "kubernetes": versions.KUBERNETES_VERSION,
                "etcd": versions.ETCD_VERSION,
                "kwok": versions.KWOK_VERSION,
            },
            "server": server,
            "ports": ports.to_json(),
            "kubeconfig": str(self.layout.kubeconfig),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "real_node": self.real_node,
            "components": list(REAL_NODE_ORDER if self.real_node else components.ORDER),
            "processes": {},
        }
        if self.real_node:
            state["versions"]["metrics-server"] = versions.METRICS_SERVER_VERSION
            state["versions"]["coredns"] = versions.COREDNS_VERSION
            state["node_ports"] = node_ports.to_json()
            state["images"] = {i.name: str(i.archive) for i in built}
        return state

    def _write_files(self, server: str, ports: Ports, node_ports: NodePorts) -> certs.Pki:
        """PKI, kubeconfigs and component configs; returns the PKI's paths."""
        lay = self.layout
        pki = certs.generate(lay.pki, service_ip=components.SERVICE_IP)
        if self.real_node:
            self._write_node_files(pki, server, node_ports)
        kubeconfig.write(
            lay.kubeconfig,
            server=server,
            ca_cert=pki.ca_cert,
            client_cert=pki.client_cert("admin"),
            client_key=pki.client_key("admin"),
        )
        for who in ("controller-manager", "scheduler", "kwok"):
            kubeconfig.write(
                lay.component_kubeconfig(who),
                server=server,
                ca_cert=pki.ca_cert,
                client_cert=pki.client_cert(who),
                client_key=pki.client_key(who),
                user=who,
            )
        kwokconfig.write(
            lay.kwok_config, server_port=ports.kwok, kubelet_version=versions.KUBERNETES_VERSION
        )
        return pki

    @staticmethod
    def _create_kwok_nodes(api: ApiClient) -> None:
        for name in NODE_NAMES:
            resp = api.post("/api/v1/nodes", kwokconfig.node_manifest(name))
            if resp.status not in (201, 409):
                raise ClusterError(f"creating node {name}: HTTP {resp.status}: {resp.body!r}")

    def _write_node_files(self, pki: certs.Pki, server: str, ports: NodePorts) -> None:
        """The node's certs, kubeconfigs and config files (containerd, CNI, kubelet, proxy)."""
        certs.generate_node(pki.dir, node_name=node.NODE_NAME, node_ips=(node.NODE_IP, "127.0.0.1"))
        for who in ("kubelet", "kube-proxy", "kube-router", "metrics-server", "coredns"):
            kubeconfig.write(
                self.node_layout.kubeconfig(who),
                server=server,
                ca_cert=pki.ca_cert,
                client_cert=pki.client_cert(who),
                client_key=pki.client_key(who),
                user=who,
            )
        node.write_configs(self.node_layout, ports, pki, components.SERVICE_CIDR)

    def _control_plane_command(
        self, name: str, bins: Mapping[str, Path], ports: Ports
    ) -> tuple[list[str], dict[str, str]]:
        lay = self.layout
        argv, env = _COMMANDS[name](bins[name], lay, ports), dict(os.environ)
        if name == "kwok":
            env["KWOK_WORKDIR"] = str(lay.kwok_dir)  # never read ~/.kwok/kwok.yaml
        if name == "kube-apiserver" and self.real_node:
            extra = components.real_node_apiserver_flags(lay, advertise=node.NODE_IP)
            overridden = {flag.split("=", 1)[0] for flag in extra}
            argv = [a for a in argv if a.split("=", 1)[0] not in overridden] + extra
        return argv, env

    def _node_command(
        self,
        name: str,
        bins: Mapping[str, Path],
        ports: NodePorts,
        pki: certs.Pki,
        apiserver_port: int,
    ) -> list[str]:
        nl = self.node_layout
        commands: dict[str, Callable[[], list[str]]] = {
            "containerd": lambda: node.containerd_cmd(nl),
            "kubelet": lambda: node.kubelet_cmd(bins["kubelet"], nl),
            "kube-proxy": lambda: node.proxy_cmd(bins["kube-proxy"], nl),
            "kube-router": lambda: node.kube_router_cmd(
                bins["kube-router"], nl, components.SERVICE_CIDR
            ),
            "metrics-server": lambda: node.metrics_server_cmd(
                bins["metrics-server"], nl, ports, pki
            ),
            "coredns": lambda: node.coredns_cmd(bins["coredns"], nl),
            "apiserver-relay": lambda: node.relay_cmd(apiserver_port),
        }
        return commands[name]()

    def _start_node(
        self,
        launch: Callable[[str], None],
        *,
        state: dict[str, Any],
        api: ApiClient,
        ports: NodePorts,
        built: list[images.Image],
        deadline: float,
    ) -> None:
        """Host set-up, containerd with the images, kubelet, kube-proxy, kube-router and
        metrics-server."""
        nl = self.node_layout
        undo: dict[str, Any] = {}
        state["host"] = undo
        try:
            node.prepare_host(self.log, undo, components.SERVICE_CIDR)
        finally:
            self._save_state(state)  # whatever was changed, `down` must be able to undo
        # Pods reach the API server through the `kubernetes` Service, which points here.
        launch("apiserver-relay")

        self.log("starting containerd (Debian's) with state under the cluster root")
        launch("containerd")
        self._wait("containerd socket", nl.containerd_sock.exists, deadline)
        # The base image is only an input of the server image's build: pods never run it.
        wanted = [i for i in built if i.name != images.BASE_IMAGE]
        images.import_images("ctr", nl.containerd_sock, wanted, self.log)

        self.log(f"starting kubelet {versions.KUBERNETES_VERSION} as node {node.NODE_NAME}")
        launch("kubelet")
        kubelet = ApiClient(f"http://127.0.0.1:{ports.kubelet_healthz}")
        self._wait("kubelet /healthz", lambda: kubelet.ok("/healthz"), deadline)
        self._wait(f"node {node.NODE_NAME} Ready", lambda: node.node_ready(api), deadline)

        self.log("starting kube-proxy (iptables mode), kube-router (NetworkPolicy), metrics-server")
        launch("kube-proxy")
        proxy = ApiClient(f"http://127.0.0.1:{ports.proxy_healthz}")
        self._wait("kube-proxy /healthz", lambda: proxy.ok("/healthz"), deadline)
        launch("kube-router")
        self._wait("kube-router's policy chains", node.firewall_ready, deadline)
        launch("metrics-server")
        node.register_metrics_api(api, ports.metrics_server)
        self._wait("metrics API Available", lambda: node.metrics_api_available(api), deadline)

        self.log(f"starting CoreDNS {versions.COREDNS_VERSION} behind {coredns.DNS_SERVICE_IP}")
        node.register_dns(api, ports.coredns)
        launch("coredns")
        dns = ApiClient(f"http://127.0.0.1:{ports.coredns_ready}")
        self._wait("CoreDNS /ready", lambda: dns.ok("/ready"), deadline)

    def _nodes_ready(self, api: ApiClient) -> bool:
        """Both fake nodes Ready with no taints left (not-ready taints go once Ready)."""
        return self.nodes_ready(api) == len(NODE_NAMES)

    @staticmethod
    def nodes_ready(api: ApiClient, label: tuple[str, str] = kwokconfig.NODE_LABEL) -> int:
        """Ready, untainted nodes with ``label`` (default: the KWOK nodes)."""
        resp = api.get("/api/v1/nodes?labelSelector=" + "%3D".join(label))
        if resp.status != 200:
            return 0
        count = 0
        for item in resp.json().get("items", []):
            conds = item.get("status", {}).get("conditions", [])
            ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conds)
            if ready and not item.get("spec", {}).get("taints"):
                count += 1
        return count

    def _check_children(self) -> None:
        """Raise ComponentError for the first started component that has exited."""
        for name, rec in self._records().items():
            if not process.alive(rec):
                child = self._children.get(name)
                code = child.poll() if child is not None else None
                detail = f"exit code {code}" if code is not None else "exited"
                raise ComponentError(name, self.layout.log(name), detail)

    def _wait(self, what: str, ready: Callable[[], bool], deadline: float) -> None:
        start = time.monotonic()
        while True:
            self._check_children()
            if ready():
                self.log(f"  {what}: ok ({time.monotonic() - start:.1f}s)")
                return
            if time.monotonic() > deadline:
                logs = ", ".join(str(self.layout.log(n)) for n in self._records())
                raise ClusterError(f"timed out waiting for {what}; see the logs: {logs}")
            time.sleep(0.2)

    def _abort(self) -> None:
        """After a failed start: stop what was started, keep the logs to read."""
        self._stop_all()
        self.layout.state.unlink(missing_ok=True)

    # -- down ------------------------------------------------------------------------------

    def _stop_all(self) -> list[str]:
        state = self._load_state()
        recs = self._records(state)
        stopped: list[str] = []
        if state and state.get("real_node"):
            stopped += self._stop_node(state, recs)
        order = [n for n in reversed(self._expected(state)) if n not in node.ORDER]
        stopped += process.stop([recs[n] for n in order if n in recs])
        for child in self._children.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(5)  # reap; stop() has ended it already
        self._children.clear()
        return stopped

    def _stop_node(self, state: Mapping[str, Any], recs: Mapping[str, process.Record]) -> list[str]:
        """Stop the node in the order that leaves nothing behind on the host.

        metrics-server, kube-proxy and the kubelet first (so nothing restarts pods), then
        every pod through the CRI while containerd still runs, then containerd and any shim
        left, then kube-proxy's rules, mounts, cgroups, and the host settings.
        """
        nl = self.node_layout
        first = (
            "coredns",
            "metrics-server",
            "kube-router",
            "kube-proxy",
            "kubelet",
            "apiserver-relay",
        )
        stopped = process.stop([recs[n] for n in first if n in recs])
        found = binaries.locate_all(["crictl", "kube-proxy"])
        if "containerd" in recs and process.alive(recs["containerd"]):
            node.remove_pods(found.get("crictl"), nl, self.log)
        stopped += process.stop([recs["containerd"]] if "containerd" in recs else [])
        node.kill_shims(nl, self.log)
        node.proxy_cleanup(found.get("kube-proxy"), self.log)
        node.remove_router_rules(self.log)
        unmounted = node.unmount_under(self.root)
        if unmounted:
            self.log(f"  unmounted {unmounted} leftover mounts under {self.root}")
        node.remove_cgroups(self.log)
        node.restore_host(state.get("host") or {}, self.log)
        node.release(self.root)
        return stopped

    def down(self, *, keep_logs: bool = False) -> bool:
        """Stop the recorded processes and remove the state; False if nothing was running."""
        if self.use_existing:
            self.log("existing cluster: nothing to stop")
            return False
        t0 = time.monotonic()
        stopped = self._stop_all()
        lay = self.layout
        left = images.mounts_under(lay.root) if lay.root.exists() else []
        if left:
            # Deleting through a mount (a pod's hostPath volume) would delete the host's files.
            self.log(f"not removing {lay.root}: still mounted below it: {', '.join(left[:5])}")
        elif lay.marker.exists():
            if keep_logs:
                for child in lay.root.iterdir():
                    if child != lay.logs:
                        if child.is_dir() and not child.is_symlink():
                            shutil.rmtree(child)
                        else:
                            child.unlink()
            else:
                shutil.rmtree(lay.root)
        if stopped:
            self.log(
                f"stopped {', '.join(stopped)} in {time.monotonic() - t0:.1f}s; "
                f"removed {lay.root}" + (" (kept logs)" if keep_logs else "")
            )
        else:
            self.log(f"no cluster running under {lay.root}")
        return bool(stopped)

    # -- status ----------------------------------------------------------------------------

    def status(self) -> Status:
        if self.use_existing:
            return Status(self.root, True, self.kubeconfig, None, (), True, 0)
        state = self._load_state()
        recs = self._records(state)
        comps = tuple(
            ComponentStatus(
                name,
                recs[name].pid if name in recs else None,
                name in recs and process.alive(recs[name]),
                self.layout.log(name),
            )
            for name in self._expected(state)
            if state is not None
        )
        ready, nodes = False, 0
        if state is not None and all(c.running for c in comps):
            api = self.client()
            ready = api.ok("/readyz")
            with contextlib.suppress(OSError):
                nodes = self.nodes_ready(api)
                if state.get("real_node"):
                    nodes = self.nodes_ready(api, ("localcluster/node", "real"))
        return Status(
            self.root,
            False,
            self.layout.kubeconfig,
            str(state["server"]) if state else None,
            comps,
            ready,
            nodes,
        )

    # -- context manager -------------------------------------------------------------------

    def __enter__(self) -> Self:
        self._started_here = self.up()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._started_here:  # leave a cluster that was already running alone
            self.down()
