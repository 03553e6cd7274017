"""Operator benchmark on the local control plane (``python -m bench operator [--quick]``).

Measured in one run, against a peer of the same work:

- apply -> Ready time for 1 and for N ModelDeployments (default 2,000), against the same number
  of bare Deployments with the identical pod template applied directly (ratio ours / bare);
  the controller-manager's and scheduler's client limits are raised (LOCALCLUSTER_KUBE_API_QPS,
  default 200 here) so that the control plane's own pacing does not hide the operator's;
- the operator's own throughput in the large scenario: time from the first create to every
  child applied, reconciles per second, API requests per resource and per child watch event,
  and the reads of a ModelDeployment it made (0: the parent comes from its watch cache);
- API writes during the steady state after Ready: the operator's own write counter and the
  number of ModelDeployments and children whose resourceVersion moved (target: 0 per minute);
- the operator process's peak RSS.

Results are printed and written to ``.bench/operator-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch

import localcluster
from localcluster import components, kwokconfig
from modeldeploy import api, render
from modeldeploy.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
IMAGE = "modeldeploy/modelserver:bench"
MODEL = {"uri": "file:///opt/models/iris/model.joblib", "version": "1"}
# Small requests: 3 x N pods must fit on the fake nodes' 8 CPUs each.
SPEC = {"model": MODEL, "replicas": 1, "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}}}
PODS_PER_NODE = 110  # kwokconfig.node_manifest
DEFAULT_QPS = "200"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait(what: str, probe: Callable[[], bool], timeout: float, interval: float = 0.25) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if probe():
            return time.monotonic() - started
        time.sleep(interval)
    raise TimeoutError(f"{what} not reached within {timeout}s")


def _status_mib(pid: int, field: str) -> float:
    """A memory figure of /proc/PID/status (VmRSS, VmHWM) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _metrics_text(metrics_port: int) -> str:
    """The operator's /metrics page."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as page:
        text: str = page.read().decode()
    return text


def _metric(metrics_port: int, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    text = _metrics_text(metrics_port)
    wanted = [f'{key}="{value}"' for key, value in labels.items()]
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            series, _, value = line.rpartition(" ")
            if all(label in series for label in wanted):
                total += float(value)
    return total


def _requests_by_call(metrics_port: int) -> dict[str, float]:
    """modeldeploy_api_requests_total per "VERB kind"."""
    text = _metrics_text(metrics_port)
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("modeldeploy_api_requests_total{"):
            series, _, value = line.rpartition(" ")
            labels = dict(
                part.split("=", 1) for part in series[series.index("{") + 1 : -1].split(",")
            )
            key = f"{labels['verb'].strip(chr(34))} {labels['kind'].strip(chr(34))}"
            out[key] = out.get(key, 0.0) + float(value)
    return out


def _follow(
    list_call: Callable[..., Any],
    namespace: str,
    count: int,
    done: Callable[[dict[str, Any]], bool],
    *,
    timeout: float,
    on_event: Callable[[], None] | None = None,
) -> None:
    """Return once ``count`` objects of the namespace are ``done``.

    One list, then a watch: polling thousands of objects every second or two would load the
    API server more than some of the work measured (the same for both sides).
    """
    deadline = time.monotonic() + timeout
    while True:
        listed = json.loads(list_call(namespace, _preload_content=False).data)
        finished = {item["metadata"]["name"] for item in listed["items"] if done(item)}
        if len(finished) >= count:
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"{len(finished)}/{count} done in {namespace} after {timeout}s")
        try:
            for event in watch.Watch().stream(
                list_call,
                namespace,
                resource_version=listed["metadata"]["resourceVersion"],
                timeout_seconds=max(1, int(min(remaining, 300))),
            ):
                obj = event["raw_object"]
                name = obj["metadata"]["name"]
                if event["type"] != "DELETED" and done(obj):
                    finished.add(name)
                else:
                    finished.discard(name)
                if on_event is not None:
                    on_event()
                if len(finished) >= count:
                    return
        except client.ApiException as error:
            if error.status != 410:  # the watch's resourceVersion expired: list again
                raise


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds spent by the control plane's processes (and the operator) in a span."""

    def __init__(self, cluster: localcluster.Cluster, operator_pid: int | None = None):
        self.pids = {c.name: c.pid for c in cluster.status().components if c.pid and c.running}
        if operator_pid is not None:
            self.pids["operator"] = operator_pid

    def read(self) -> dict[str, float]:
        out = {}
        for name, pid in self.pids.items():
            try:
                out[name] = _cpu_seconds(pid)
            except OSError:
                continue
        return out

    @staticmethod
    def spent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        return {name: round(after[name] - before[name], 1) for name in after if name in before}


def _answers(metrics_port: int) -> bool:
    try:
        _metric(metrics_port, "modeldeploy_api_writes_total")
    except OSError:
        return False
    return True


def _operator_writes(metrics_port: int) -> float:
    return _metric(metrics_port, "modeldeploy_api_writes_total")


def _counters(metrics_port: int) -> dict[str, float]:
    return {
        "reconciles": _metric(metrics_port, "modeldeploy_reconciles_total"),
        "requests": _metric(metrics_port, "modeldeploy_api_requests_total"),
        "parent_reads": _metric(
            metrics_port, "modeldeploy_api_requests_total", verb="GET", kind=api.KIND
        ),
        "child_events": _metric(metrics_port, "modeldeploy_watch_events_total")
        - _metric(metrics_port, "modeldeploy_watch_events_total", kind=api.KIND),
        # A new resource's Deployment is created; a changed one applied.
        "deployments_applied": sum(
            _metric(metrics_port, "modeldeploy_api_writes_total", kind="Deployment", verb=verb)
            for verb in ("create", "apply")
        ),
    }


@contextmanager
def _operator(kubeconfig: Path, log: Path, metrics_port: int) -> Iterator[subprocess.Popen[bytes]]:
    env = dict(os.environ, KUBECONFIG=str(kubeconfig), MODELDEPLOY_SERVER_IMAGE=IMAGE)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "modeldeploy",
                f"--metrics-port={metrics_port}",
                "--health-port=0",
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait("the operator's metrics endpoint", lambda: _answers(metrics_port), timeout=120)
            yield proc
        finally:
            proc.terminate()
            proc.wait(timeout=30)


class Run:
    """One benchmark run against one cluster."""

    def __init__(self, cluster: localcluster.Cluster):
        self.cluster = cluster
        self.api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
        self.custom = client.CustomObjectsApi(self.api)
        self.apps = client.AppsV1Api(self.api)
        self.core = client.CoreV1Api(self.api)

    def add_nodes(self, count: int) -> None:
        """More KWOK nodes: 2 x 110 pod slots are too few for 3 x N single-replica workloads."""
        for i in range(count):
            self.core.create_node(kwokconfig.node_manifest(f"kwok-bench-{i}"))

        def ready() -> bool:
            nodes = self.core.list_node().items
            return (
                sum(
                    1
                    for node in nodes
                    for c in node.status.conditions or []
                    if c.type == "Ready" and c.status == "True"
                )
                >= count + 2
            )

        _wait("extra nodes Ready", ready, timeout=60)

    def namespace(self, name: str) -> str:
        self.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
        return name

    def bare(self, count: int, namespace: str) -> float:
        """Apply ``count`` plain Deployments of the operator's pod template; time to available."""
        spec = api.parse_spec(SPEC)
        started = time.monotonic()
        for i in range(count):
            body = {"metadata": {"name": f"bare-{i}", "namespace": namespace, "uid": "x"}}
            deployment = render.render_deployment(
                render.Owner.from_body(body), spec, Settings(server_image=IMAGE)
            )
            del deployment["metadata"]["ownerReferences"]
            self.apps.create_namespaced_deployment(namespace, deployment)
        self._deployments_available(namespace, count)
        return time.monotonic() - started

    def children(self, count: int, namespace: str) -> float:
        """Create, for ``count`` names, the children a ModelDeployment renders to (Deployment,
        Service, NetworkPolicy), as a user without the operator would; time to available.

        Against this peer the ratio is the operator's own overhead: the custom resource, the
        reconcile and the status, not the cost of the objects every model needs."""
        spec = api.parse_spec(SPEC)
        settings = Settings(server_image=IMAGE)
        create = {
            "Deployment": self.apps.create_namespaced_deployment,
            "Service": self.core.create_namespaced_service,
            "NetworkPolicy": client.NetworkingV1Api(self.api).create_namespaced_network_policy,
        }
        started = time.monotonic()
        for i in range(count):
            body = {"metadata": {"name": f"plain-{i}", "namespace": namespace, "uid": "x"}}
            for obj in render.render_children(render.Owner.from_body(body), spec, settings).wanted:
                del obj["metadata"]["ownerReferences"]
                create[obj["kind"]](namespace, obj)
        self._deployments_available(namespace, count)
        return time.monotonic() - started

    def _deployments_available(self, namespace: str, count: int) -> None:
        def available(item: dict[str, Any]) -> bool:
            return ((item.get("status") or {}).get("availableReplicas") or 0) == 1

        _follow(self.apps.list_namespaced_deployment, namespace, count, available, timeout=1800)

    def models(
        self, count: int, namespace: str, metrics_port: int | None = None
    ) -> tuple[float, float | None]:
        """Apply ``count`` ModelDeployments; seconds until every one is Ready, and (with the
        operator's metrics port) until the operator had applied every Deployment."""
        applied_before = (
            _counters(metrics_port)["deployments_applied"] if metrics_port is not None else 0.0
        )
        applied_at: list[float] = []
        started = time.monotonic()
        for i in range(count):
            body = {
                "apiVersion": api.API_VERSION,
                "kind": api.KIND,
                "metadata": {"name": f"md-{i}"},
                "spec": SPEC,
            }
            self.custom.create_namespaced_custom_object(
                api.GROUP, api.VERSION, namespace, api.PLURAL, body
            )

        def ready(item: dict[str, Any]) -> bool:
            return any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in (item.get("status") or {}).get("conditions") or []
            )

        last_look = [0.0]

        def applied() -> None:
            # Scraping the operator at every watch event would load it: twice a second at most.
            if metrics_port is not None and not applied_at and time.monotonic() > last_look[0]:
                last_look[0] = time.monotonic() + 0.5
                done = _counters(metrics_port)["deployments_applied"] - applied_before
                if done >= count:
                    applied_at.append(time.monotonic() - started)

        def list_models(namespace: str, **kwargs: Any) -> Any:
            return self.custom.list_namespaced_custom_object(
                api.GROUP, api.VERSION, namespace, api.PLURAL, **kwargs
            )

        _follow(list_models, namespace, count, ready, timeout=1800, on_event=applied)
        return time.monotonic() - started, (applied_at[0] if applied_at else None)

    def versions(self, namespace: str) -> dict[str, str]:
        """resourceVersion of every ModelDeployment and child in ``namespace``."""
        out: dict[str, str] = {}
        for item in self.custom.list_namespaced_custom_object(
            api.GROUP, api.VERSION, namespace, api.PLURAL
        )["items"]:
            out[f"mdep/{item['metadata']['name']}"] = item["metadata"]["resourceVersion"]
        for kind, items in (
            ("deploy", self.apps.list_namespaced_deployment(namespace).items),
            ("svc", self.core.list_namespaced_service(namespace).items),
        ):
            for obj in items:
                out[f"{kind}/{obj.metadata.name}"] = obj.metadata.resource_version
        return out


def _churn(run: Run, metrics_port: int, pid: int, cycles: int) -> dict[str, Any]:
    """Create and delete ModelDeployments ``cycles`` times (10 at a time): the operator's RSS
    after the first tenth and at the end, and what it still remembers once all are gone."""
    namespace = run.namespace("churn")
    stores = ("parents", "phases", "written", "applied", "locks", "children")
    before = {s: _metric(metrics_port, "modeldeploy_remembered_objects", store=s) for s in stores}
    body = {"apiVersion": api.API_VERSION, "kind": api.KIND, "spec": {**SPEC, "replicas": 0}}
    samples: dict[int, float] = {}
    for start in range(0, cycles, 10):
        names = [f"c-{i}" for i in range(start, min(start + 10, cycles))]
        for name in names:
            run.custom.create_namespaced_custom_object(
                api.GROUP, api.VERSION, namespace, api.PLURAL, {**body, "metadata": {"name": name}}
            )
        for name in names:
            run.custom.delete_namespaced_custom_object(
                api.GROUP, api.VERSION, namespace, api.PLURAL, name
            )
        done = start + len(names)
        if done in (cycles // 10, cycles):
            samples[done] = round(_status_mib(pid, "VmRSS"), 1)

    def remembered() -> dict[str, float]:
        return {s: _metric(metrics_port, "modeldeploy_remembered_objects", store=s) for s in stores}

    try:
        _wait("every churned resource forgotten", lambda: remembered() == before, timeout=300)
    except TimeoutError:
        after = remembered()
        differ = {s: (before[s], after[s]) for s in stores if before[s] != after[s]}
        raise TimeoutError(
            f"stores not back to where they were (before, after): {differ}"
        ) from None
    print(f"churn of {cycles}: RSS {samples} MiB; memory stores back to {before}")
    return {"cycles": cycles, "rss_mib_after": samples, "remembered_before_and_after": before}


def _steady_state(run: Run, namespace: str, metrics_port: int, seconds: float) -> dict[str, Any]:
    """Writes and moved resourceVersions while nothing changes, in one namespace."""
    before, writes_before = run.versions(namespace), _operator_writes(metrics_port)
    time.sleep(seconds)
    after, writes_after = run.versions(namespace), _operator_writes(metrics_port)
    moved = sum(1 for key, version in after.items() if before.get(key) != version)
    per_minute = (writes_after - writes_before) * 60 / seconds
    resources = sum(1 for key in after if key.startswith("mdep/"))
    print(
        f"steady state over {seconds:.0f}s: {per_minute:.2f} operator writes/min "
        f"({per_minute / resources:.4f} per resource), {moved}/{len(after)} objects changed"
    )
    return {
        "operator_writes_per_minute": round(per_minute, 2),
        "writes_per_resource_per_minute": round(per_minute / resources, 4),
        "objects_whose_resourceVersion_moved": moved,
        "objects_watched": len(after),
    }


def _scenario(
    run: Run,
    n: int,
    *,
    large: bool,
    proc: subprocess.Popen[bytes],
    metrics_port: int,
    into: dict[str, Any],
) -> None:
    """N bare Deployments, N sets of the same children created directly, then N
    ModelDeployments: times to Ready, and for the large scenario the operator's counters and
    every process's CPU time in each phase."""
    # The single-resource case is short and noisy: alternate and take the median.
    rounds = 1 if large else 5
    bares, plains, ours_ = [], [], []
    meter = CpuMeter(run.cluster, proc.pid)
    for r in range(rounds):
        cpu_start = meter.read()
        bares.append(run.bare(n, run.namespace(f"bare-{n}-{r}")))
        cpu_bare = meter.read()
        plains.append(run.children(n, run.namespace(f"plain-{n}-{r}")))
        cpu_plain = meter.read()
        before = _counters(metrics_port)
        calls_before = _requests_by_call(metrics_port)
        took, applied = run.models(n, run.namespace(f"md-{n}-{r}"), metrics_port)
        cpu_ours = meter.read()
        ours_.append(took)
    if large:
        into["cpu_seconds"] = {
            "bare": meter.spent(cpu_start, cpu_bare),
            "children": meter.spent(cpu_bare, cpu_plain),
            "ours": meter.spent(cpu_plain, cpu_ours),
        }
        print(f"CPU seconds at {n}: {json.dumps(into['cpu_seconds'])}")
        after = _counters(metrics_port)
        delta = {key: after[key] - before[key] for key in after}
        into["operator"] = {
            "seconds_until_every_child_applied": round(applied or float("nan"), 2),
            "reconciles_per_second": round(delta["reconciles"] / took, 1),
            "api_requests_per_resource": round(delta["requests"] / n, 2),
            "api_requests_per_child_event": round(
                delta["requests"] / max(delta["child_events"], 1), 3
            ),
            "child_events": int(delta["child_events"]),
            "parent_reads": int(delta["parent_reads"]),
            "requests_per_resource_by_call": {
                call: round((total - calls_before.get(call, 0.0)) / n, 2)
                for call, total in sorted(_requests_by_call(metrics_port).items())
                if total > calls_before.get(call, 0.0)
            },
        }
        print(f"operator at {n}: {json.dumps(into['operator'])}")
    bare, plain, ours = (statistics.median(x) for x in (bares, plains, ours_))
    into[f"ready_seconds_{n}"] = {
        "bare": round(bare, 2),
        "children": round(plain, 2),
        "ours": round(ours, 2),
        "ratio": round(ours / bare, 2),
        "ratio_to_children": round(ours / plain, 2),
        "rounds": rounds,
    }
    print(
        f"apply -> Ready, {n:>4} resources: bare Deployments {bare:7.2f}s, the same children "
        f"created directly {plain:7.2f}s, ModelDeployments {ours:7.2f}s; ratio {ours / bare:.2f} "
        f"to bare, {ours / plain:.2f} to the children (median of {rounds})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench operator", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="50 resources and a 20 s steady window"
    )
    parser.add_argument(
        "--count", type=int, default=None, help="resources in the large scenario (default 2000)"
    )
    parser.add_argument("--steady-seconds", type=float, default=None)
    parser.add_argument(
        "--churn", type=int, default=1000, help="create/delete cycles of the memory check"
    )
    args = parser.parse_args(argv)
    count = args.count or (50 if args.quick else 2000)
    os.environ.setdefault(components.QPS_ENV, DEFAULT_QPS)
    steady = args.steady_seconds or (20.0 if args.quick else 60.0)

    out_dir = ROOT / ".bench"
    out_dir.mkdir(exist_ok=True)
    cluster = localcluster.Cluster(root=out_dir / "operator-cluster")
    cluster.down()
    cluster.up()
    results: dict[str, Any] = {
        "count": count,
        "steady_seconds": steady,
        "controller_kube_api_qps": os.environ[components.QPS_ENV],
    }
    try:
        cluster.kubectl(
            "apply",
            "--server-side",
            "-f",
            str(ROOT / "crds" / "serving.modeldeploy.io_modeldeployments.yaml"),
        )
        cluster.kubectl(
            "wait", "--for=condition=Established", "crd/modeldeployments.serving.modeldeploy.io"
        )
        run = Run(cluster)
        # The three scenarios' pods run at once: room for 3 x N, beside the 2 nodes of the cluster.
        run.add_nodes(max(1, math.ceil(3 * count / PODS_PER_NODE) - 2 + 1))
        metrics_port = _free_port()
        with _operator(cluster.kubeconfig, out_dir / "operator-bench.log", metrics_port) as proc:
            for n in (1, count):
                _scenario(
                    run, n, large=n == count, proc=proc, metrics_port=metrics_port, into=results
                )
            time.sleep(5)  # let the last events settle
            results["steady_state"] = _steady_state(run, f"md-{count}-0", metrics_port, steady)
            results["operator_peak_rss_mib"] = round(_status_mib(proc.pid, "VmHWM"), 1)
            print(f"operator peak RSS: {results['operator_peak_rss_mib']} MiB")
            if args.churn:
                results["churn"] = _churn(run, metrics_port, proc.pid, args.churn)
    except Exception:
        cluster.down(keep_logs=True)
        print(f"failed; component logs kept in {cluster.root / 'logs'}", file=sys.stderr)
        raise
    cluster.down()
    path = out_dir / f"operator-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
