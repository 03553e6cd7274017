"""Our own control plane on 127.0.0.1 under a root directory, with one kind of node.

``up`` is idempotent (a running cluster is left alone), bounded (every wait has a timeout)
and loud when something breaks (a component that exits during startup is reported with the
tail of its log). ``down`` stops only the processes recorded in the cluster's
``state.json`` and removes the directory only if it carries our marker file. What the nodes
add (KWOK's controller and fake nodes, or a real node) comes from a ``backend.Nodes``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from localcluster import binaries, certs, components, images, kubeconfig, mounts, process, versions
from localcluster import state as state_file
from localcluster.api import ApiClient
from localcluster.backend import ComponentStatus, Log, Nodes, Start, Status
from localcluster.components import Layout, Ports
from localcluster.errors import ClusterError, ComponentError
from localcluster.nodeconfig import NodeLayout, NodePorts
from localcluster.state import State

MARKER_TEXT = "state of `python -m localcluster`; removed by `down`\n"
#: Control-plane processes, then the nodes' (``Nodes.processes``); their ports in this order.
_PORTS = 6

_COMMANDS: dict[str, Callable[[Path, Layout, Ports], list[str]]] = {
    "etcd": components.etcd,
    "kube-apiserver": components.kube_apiserver,
    "kube-controller-manager": components.kube_controller_manager,
    "kube-scheduler": components.kube_scheduler,
}


class LocalCluster:
    """The control plane under ``root`` plus ``nodes``; ``kind_of`` names the kind of nodes
    a recorded state was started with (``down`` and ``status`` follow the record)."""

    def __init__(
        self,
        root: Path,
        nodes: Nodes,
        *,
        kind_of: Callable[[State | None], Nodes],
        build_missing: bool,
        log: Log,
    ) -> None:
        self.root = root
        self.layout = Layout(root)
        self.node_layout = NodeLayout(root)
        self.nodes = nodes
        self.kind_of = kind_of
        self.build_missing = build_missing
        self.log = log
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    def sibling(self, root: Path) -> LocalCluster:
        """The same kind of cluster under another root (to clean up after a dead one)."""
        return LocalCluster(
            root, self.nodes, kind_of=self.kind_of, build_missing=False, log=self.log
        )

    # -- what the running cluster recorded --------------------------------------------------

    def load_state(self) -> State | None:
        return state_file.load(self.layout.state)

    def save_state(self, state: State) -> None:
        state_file.save(self.layout.state, state)

    @property
    def kubeconfig(self) -> Path:
        return self.layout.kubeconfig

    @property
    def server(self) -> str:
        state = self.load_state()
        if state is None:
            raise ClusterError(f"no cluster running under {self.root}")
        return state.server

    def client(self) -> ApiClient:
        """A stdlib client authenticated as admin."""
        pki = certs.Pki(self.layout.pki)
        return ApiClient(
            self.server,
            ca_cert=pki.ca_cert,
            client_cert=pki.client_cert("admin"),
            client_key=pki.client_key("admin"),
        )

    def is_up(self) -> bool:
        """Every recorded component is alive."""
        state = self.load_state()
        if state is None or not state.processes:
            return False
        recs = state.processes
        return set(recs) == set(state.components) and all(map(process.alive, recs.values()))

    def node_images(self) -> dict[str, Path]:
        state = self.load_state()
        return {k: Path(v) for k, v in (state.images if state else {}).items()}

    def has_real_node(self) -> bool:
        return self.kind_of(self.load_state()).real_node

    # -- up --------------------------------------------------------------------------------

    def up(self, timeout: float | None) -> bool:
        if self.is_up():
            running = self.kind_of(self.load_state())
            if self.nodes.real_node and not running.real_node:
                raise ClusterError(
                    f"the cluster under {self.root} is up without a real node; `down` it first"
                )
            self.log(
                f"cluster already up{running.description} under {self.root} "
                f"(kubeconfig {self.kubeconfig})"
            )
            return False
        state = self.load_state()
        if state is not None and state.processes:
            dead = [n for n, r in state.processes.items() if not process.alive(r)]
            self.log(f"stale cluster under {self.root} ({', '.join(dead)} not running): cleaning")
            self.down(keep_logs=False)

        self.nodes.check()
        names = [*components.CONTROL_PLANE, "kubectl", *self.nodes.binaries]
        if self.build_missing:
            bins = binaries.build(names, verbose=False, log=self.log)
        else:
            bins = binaries.require(names)
        built = self.nodes.inputs(self.build_missing, self.log)
        for attempt in (1, 2):
            try:
                self._start(bins, self.nodes.timeout if timeout is None else timeout, built)
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

    def _prepare_root(self) -> None:
        lay = self.layout
        if lay.root.exists() and any(lay.root.iterdir()):
            if not lay.marker.exists():
                raise ClusterError(
                    f"{lay.root} exists, is not empty and was not made by localcluster"
                )
            shutil.rmtree(lay.root)
        lay.root.mkdir(parents=True, exist_ok=True)
        lay.marker.write_text(MARKER_TEXT)

    def _start(self, bins: Mapping[str, Path], timeout: float, built: list[images.Image]) -> None:
        t0 = time.monotonic()
        lay = self.layout
        self.nodes.claim(self)
        self._prepare_root()
        free = process.free_ports(_PORTS + len(NodePorts.__dataclass_fields__))
        ports, node_ports = Ports(*free[:_PORTS]), NodePorts(*free[_PORTS:])
        server = f"https://127.0.0.1:{ports.apiserver}"
        state = State(
            server=server,
            ports=ports,
            kubeconfig=str(lay.kubeconfig),
            components=(*components.CONTROL_PLANE, *self.nodes.processes),
            versions={
                "kubernetes": versions.KUBERNETES_VERSION,
                "etcd": versions.ETCD_VERSION,
                "kwok": versions.KWOK_VERSION,
            },
            real_node=self.nodes.real_node,
        )
        pki = certs.generate(lay.pki, service_ip=components.SERVICE_IP)
        start = Start(self, state, ports, node_ports, server, pki, bins, built, t0 + timeout)
        self.nodes.new_state(state, start)
        self.save_state(state)
        self._write_files(start)

        self.log(f"starting etcd {versions.ETCD_VERSION} on 127.0.0.1:{ports.etcd_client}")
        start.launch("etcd")
        etcd = ApiClient(f"http://127.0.0.1:{ports.etcd_client}")
        start.wait("etcd healthy", lambda: etcd.ok("/health"))

        self.log(f"starting kube-apiserver {versions.KUBERNETES_VERSION} on {server}")
        start.launch("kube-apiserver")
        api = start.api = self.client()
        start.wait("kube-apiserver /readyz", lambda: api.ok("/readyz"))

        rest = ("kube-controller-manager", "kube-scheduler", *self.nodes.with_controllers)
        self.log(f"starting {', '.join(rest)}")
        for name in rest:
            start.launch(name)
        self.nodes.after_controllers(start)

        kcm = ApiClient(f"https://127.0.0.1:{ports.controller_manager}", verify=False)
        sched = ApiClient(f"https://127.0.0.1:{ports.scheduler}", verify=False)
        start.wait("kube-controller-manager /healthz", lambda: kcm.ok("/healthz"))
        start.wait("kube-scheduler /healthz", lambda: sched.ok("/healthz"))
        self.nodes.start(start)
        start.wait(
            "ServiceAccount default/default",
            lambda: api.ok("/api/v1/namespaces/default/serviceaccounts/default"),
        )
        self.log(
            f"cluster up in {time.monotonic() - t0:.1f}s; "
            f"export KUBECONFIG={lay.kubeconfig}  (logs in {lay.logs})"
        )

    def _write_files(self, start: Start) -> None:
        """Kubeconfigs and the nodes' files (the PKI is written already)."""
        lay, pki = self.layout, start.pki
        self.nodes.write_files(start)
        kubeconfig.write_for(lay.kubeconfig, "admin", server=start.server, pki=pki)
        for who in ("controller-manager", "scheduler", "kwok"):
            path = lay.component_kubeconfig(who)
            kubeconfig.write_for(path, who, server=start.server, pki=pki, user=who)

    def launch(self, name: str, start: Start) -> None:
        """Start one component and record it in state.json at once (``down`` finds it)."""
        if name in _COMMANDS:
            argv, env = self._control_plane_command(name, start), dict(os.environ)
        else:
            argv, env = self.nodes.command(name, start)
        proc, rec = process.start(name, argv, self.layout.log(name), env=env, cwd=self.root)
        self._children[name] = proc
        start.state.processes[name] = rec
        self.save_state(start.state)

    def _control_plane_command(self, name: str, start: Start) -> list[str]:
        argv = _COMMANDS[name](start.bins[name], self.layout, start.ports)
        if name == "kube-apiserver":
            extra = self.nodes.apiserver_flags(self.layout)
            overridden = {flag.split("=", 1)[0] for flag in extra}
            argv = [a for a in argv if a.split("=", 1)[0] not in overridden] + extra
        return argv

    def _check_children(self) -> None:
        """Raise ComponentError for the first started component that has exited."""
        state = self.load_state()
        for name, rec in (state.processes if state else {}).items():
            if not process.alive(rec):
                child = self._children.get(name)
                code = child.poll() if child is not None else None
                detail = f"exit code {code}" if code is not None else "exited"
                raise ComponentError(name, self.layout.log(name), detail)

    def wait(self, what: str, ready: Callable[[], bool], deadline: float) -> None:
        start = time.monotonic()
        while True:
            self._check_children()
            if ready():
                self.log(f"  {what}: ok ({time.monotonic() - start:.1f}s)")
                return
            if time.monotonic() > deadline:
                state = self.load_state()
                names = state.processes if state else {}
                logs = ", ".join(str(self.layout.log(n)) for n in names)
                raise ClusterError(f"timed out waiting for {what}; see the logs: {logs}")
            time.sleep(0.2)

    def _abort(self) -> None:
        """After a failed start: stop what was started, keep the logs to read."""
        self._stop_all()
        self.layout.state.unlink(missing_ok=True)

    # -- down ------------------------------------------------------------------------------

    def _stop_all(self) -> list[str]:
        state = self.load_state()
        stopped: list[str] = []
        if state is not None:
            stopped += self.kind_of(state).stop(self, state)
            recs = state.processes
            order = [n for n in reversed(state.components) if n in recs and n not in stopped]
            stopped += process.stop([recs[n] for n in order])
        for child in self._children.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(5)  # reap; stop() has ended it already
        self._children.clear()
        return stopped

    def down(self, *, keep_logs: bool) -> bool:
        t0 = time.monotonic()
        stopped = self._stop_all()
        lay = self.layout
        left = mounts.mounts_under(lay.root) if lay.root.exists() else []
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
        state = self.load_state()
        recs = state.processes if state else {}
        comps = tuple(
            ComponentStatus(
                name,
                recs[name].pid if name in recs else None,
                name in recs and process.alive(recs[name]),
                self.layout.log(name),
            )
            for name in (state.components if state else ())
        )
        ready, nodes = False, 0
        if state is not None and all(c.running for c in comps):
            api = self.client()
            ready = api.ok("/readyz")
            with contextlib.suppress(OSError):
                nodes = nodes_ready(api, self.kind_of(state).label)
        return Status(
            self.root,
            False,
            self.layout.kubeconfig,
            state.server if state else None,
            comps,
            ready,
            nodes,
        )


def nodes_ready(api: ApiClient, label: tuple[str, str]) -> int:
    """Ready, untainted nodes with ``label``."""
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
