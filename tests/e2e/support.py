"""Helpers for the end-to-end tests: the operator as a process, Services called for real.

Everything here talks to a cluster with a real node (``localcluster up --real-node``): pods run
the server image, Service IPs are routed by kube-proxy, and the host reaches them through the
node's bridge (it is itself on the pod network at ``localcluster.nodeconfig.NODE_IP``).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.server
import importlib
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from integration import operator_support as integration_support

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_MODEL = "/opt/models/iris/model.joblib"

T = TypeVar("T")


def wait_for(
    what: str, probe: Callable[[], T | None], timeout: float = 60.0, interval: float = 0.5
) -> T:
    """The shared poller, with the longer defaults that real pods need."""
    return integration_support.wait_for(what, probe, timeout=timeout, interval=interval)


# -- files from the server image -------------------------------------------------------------


def image_file(archive: Path, path: str) -> bytes:
    """A file's bytes from an OCI archive (the upper-most layer that has it).

    The tests compare the server's answers with the very model file the image carries.
    """
    wanted = path.lstrip("/")
    with tarfile.open(archive) as outer:

        def blob(digest: str) -> bytes:
            member = outer.extractfile(f"blobs/sha256/{digest.split(':', 1)[1]}")
            assert member is not None
            return member.read()

        index = json.loads(blob_from(outer, "index.json"))
        manifest = json.loads(blob(index["manifests"][0]["digest"]))
        for layer in reversed(manifest["layers"]):
            data = blob(layer["digest"])
            if data[:2] == b"\x1f\x8b":
                data = gzip.decompress(data)
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                for name in (wanted, f"./{wanted}"):
                    with contextlib.suppress(KeyError):
                        member = tar.extractfile(name)
                        if member is not None:
                            return member.read()
    raise FileNotFoundError(f"{path} not in {archive}")


def blob_from(tar: tarfile.TarFile, name: str) -> bytes:
    member = tar.extractfile(name)
    assert member is not None
    return member.read()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- the operator ----------------------------------------------------------------------------


install_crd = integration_support.install_crd
operator_kubeconfig = integration_support.write_operator_kubeconfig


@contextlib.contextmanager
def operator_process(
    kubeconfig: Path, log_path: Path, metrics_port: int = 0
) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m modeldeploy`` as users run it, with its default server image (its metrics on
    127.0.0.1:``metrics_port`` when one is given)."""
    env = dict(os.environ, KUBECONFIG=str(kubeconfig))
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "modeldeploy",
                f"--metrics-port={metrics_port}",
                "--health-port=0",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )
    try:
        time.sleep(2)
        if proc.poll() is not None:
            raise AssertionError(f"operator exited {proc.returncode}: {log_path.read_text()}")
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# -- ModelDeployments ------------------------------------------------------------------------


class Models(integration_support.Models):
    """ModelDeployments of one namespace, and calls to their Services."""

    def __init__(self, api_client: client.ApiClient, namespace: str):
        super().__init__(api_client, namespace)
        self.autoscaling = client.AutoscalingV2Api(api_client)

    def cluster_ip(self, name: str) -> str:
        ip: str = self.core.read_namespaced_service(name, self.namespace).spec.cluster_ip
        return ip

    def pods(self, name: str) -> list[client.V1Pod]:
        selector = f"app.kubernetes.io/name=modelserver,app.kubernetes.io/instance={name}"
        items: list[client.V1Pod] = self.core.list_namespaced_pod(
            self.namespace, label_selector=selector
        ).items
        return items

    def rolled_out(self, name: str) -> bool:
        """Every replica runs the newest template and no old pod is left."""
        try:
            dep = self.apps.read_namespaced_deployment(name, self.namespace)
        except ApiException:
            return False
        st = dep.status
        want = dep.spec.replicas or 0
        return bool(
            st.observed_generation == dep.metadata.generation
            and (st.updated_replicas or 0) == want
            and (st.replicas or 0) == want
            and (st.ready_replicas or 0) == want
        )


def http_json(
    url: str, body: Any | None = None, timeout: float = 10.0
) -> tuple[int, dict[str, Any]]:
    """GET (or POST ``body`` as JSON); the status and the decoded JSON answer."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json"} if data else {}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as err:
        raw = err.read()
        try:
            return err.code, json.loads(raw or b"{}")
        except json.JSONDecodeError:
            return err.code, {"raw": raw.decode(errors="replace")}


def wait_routed(url: str, timeout: float = 30.0) -> None:
    """Wait until ``url`` answers 200 through the Service.

    A Ready ModelDeployment means ready pods; kube-proxy programs their endpoints a moment
    later, and until then a ClusterIP refuses connections.
    """

    def answers() -> bool:
        try:
            return http_json(url, timeout=2)[0] == 200
        except OSError:
            return False

    wait_for(f"{url} to answer through the Service", answers, timeout=timeout, interval=0.2)


# The benchmark's V2 request body; bench is not installed, so it comes from the repository.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
v2_request = importlib.import_module("bench.server.models").v2_body


# -- a model file server on the node's network -----------------------------------------------


@contextlib.contextmanager
def file_server(
    files: dict[str, bytes], host: str, delay: float = 0.0
) -> Iterator[tuple[str, list[str]]]:
    """Serve ``files`` over HTTP on ``host`` (the node's bridge IP, reachable from pods).

    Yields the base URL and the list of paths requested so far. ``delay`` holds each answer
    back, so a test can see a pod stay unready while its model is still on the way.
    """
    requested: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requested.append(self.path)
            data = files.get(self.path)
            if data is None:
                self.send_error(404)
                return
            time.sleep(delay)
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer((host, 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}", requested
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# -- a client pod on the pod network ---------------------------------------------------------

#: Runs in the server image (it has Python): requests in a loop, one JSON line per second. With a
#: third argument (a JSON list of rows) each request carries 10 rows drawn from it at random.
LOAD_CLIENT = r"""
import json, random, sys, threading, time, urllib.request
url, workers = sys.argv[1], int(sys.argv[2])
rows = json.loads(sys.argv[3]) if len(sys.argv) > 3 else None
size = 10 if rows else 2
def next_body():
    batch = random.choices(rows, k=size) if rows else [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]
    return json.dumps({"instances": batch}).encode()
body = next_body()
headers = {"Content-Type": "application/json"}
counts = {"ok": 0, "failed": 0}
errors = []
lock = threading.Lock()
# Count only once the network lets us through: a new pod's IP joins the NetworkPolicy's
# ipsets a second or two after the pod starts.
while True:
    try:
        req = urllib.request.Request(url, data=body, headers=headers)
        with urllib.request.urlopen(req, timeout=2) as resp:
            if resp.status == 200:
                break
    except Exception:
        time.sleep(0.2)
def work():
    while True:
        try:
            req = urllib.request.Request(url, data=next_body(), headers=headers)
            with urllib.request.urlopen(req, timeout=10) as resp:
                ok = resp.status == 200 and len(json.loads(resp.read())["predictions"]) == size
            err = None if ok else "bad answer"
        except Exception as e:  # every failure counts, whatever it is
            ok, err = False, f"{type(e).__name__}: {e}"
        with lock:
            counts["ok" if ok else "failed"] += 1
            if err and len(errors) < 20:
                errors.append(f"{time.strftime('%H:%M:%S')} {err}")
for _ in range(workers):
    threading.Thread(target=work, daemon=True).start()
while True:
    time.sleep(1)
    with lock:
        print(json.dumps({**counts, "errors": errors}), flush=True)
"""


#: Calls a URL every half second for a while and prints what each call gave, as JSON.
PROBE = r"""
import json, sys, time, urllib.request
url, seconds = sys.argv[1], float(sys.argv[2])
results = []
end = time.time() + seconds
while time.time() < end:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            results.append("ok" if resp.status == 200 else f"HTTP {resp.status}")
    except Exception as e:
        results.append(f"{type(e).__name__}: {getattr(e, 'reason', e)}")
    time.sleep(0.5)
print(json.dumps(results), flush=True)
"""


def _client_pod(name: str, image: str, command: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "client",
                    "image": image,
                    "imagePullPolicy": "Never",
                    "command": command,
                    "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}},
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": 65532,
                        "allowPrivilegeEscalation": False,
                        "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
        },
    }


def script_pod(name: str, image: str, script: str, *args: str) -> dict[str, Any]:
    """A locked-down pod (label ``app=<name>``) running ``python -c script args...``."""
    return _client_pod(name, image, ["python", "-c", script, *args])


def load_client_pod(
    name: str, url: str, workers: int, image: str, rows: list[list[float]] | None = None
) -> dict[str, Any]:
    extra = [] if rows is None else [json.dumps(rows)]
    return _client_pod(name, image, ["python", "-c", LOAD_CLIENT, url, str(workers), *extra])


def probe_pod(name: str, url: str, seconds: float, image: str) -> dict[str, Any]:
    return _client_pod(name, image, ["python", "-c", PROBE, url, str(seconds)])


def pod_log(core: client.CoreV1Api, namespace: str, name: str) -> str:
    # Raw bytes: the client would turn a JSON log line into a dict's repr otherwise.
    resp = core.read_namespaced_pod_log(name, namespace, _preload_content=False)
    text: str = resp.data.decode()
    return text


def client_counts(core: client.CoreV1Api, namespace: str, name: str) -> dict[str, Any] | None:
    """A script pod's latest report (its last log line, JSON: the load client's counters, the
    payload sink's events), or None before the first."""
    try:
        # Raw bytes: the client would turn a JSON log line into a dict's repr otherwise.
        resp = core.read_namespaced_pod_log(name, namespace, tail_lines=1, _preload_content=False)
        logs = resp.data.decode()
    except ApiException:
        return None
    lines = [line for line in logs.splitlines() if line.startswith("{")]
    if not lines:
        return None
    counts: dict[str, Any] = json.loads(lines[-1])
    return counts
