"""What who-may-call-a-model costs (issue 13): our server at c=64 with auth (cached decisions),
TLS, and both, next to the same server with neither, in one run.

`python -m bench access [--quick] [--duration S] [--rounds N]`

Four servers (2 workers each, the `pipeline` model, KServe V1, one row per request) run side by
side; wrk measures each in turn, round after round, so that a noisy neighbour on the machine
weighs on every configuration alike; the median round of each is reported with its ratio to
`off`. Auth checks tokens against a local kube-apiserver (localcluster, KWOK): a ServiceAccount
bound to a Role for `modeldeployments/predict`, its token from the TokenRequest API. wrk keeps its
connections open and sends the same token, so after the warm-up every decision comes from the
workers' caches (the figure the issue's 10 % target is about); the benchmark checks that the
API server saw no more reviews than the warm-up needed. TLS uses a self-signed P-256 certificate
(openssl); wrk negotiates TLS once per connection and does not verify it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

import localcluster
from bench.server import loadgen, models

NAMESPACE = "bench"
MODEL = "pipeline"
CONNECTIONS = 64
WORKERS = 2
RBAC = """
apiVersion: v1
kind: Namespace
metadata: {name: bench}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: caller, namespace: bench}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: predict, namespace: bench}
rules:
  - apiGroups: [serving.modeldeploy.io]
    resources: [modeldeployments/predict]
    resourceNames: [pipeline]
    verbs: [create]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: caller-predicts, namespace: bench}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: predict}
subjects: [{kind: ServiceAccount, name: caller, namespace: bench}]
"""


@dataclass(frozen=True)
class Config:
    name: str
    auth: bool
    tls: bool
    token: bool = False  # send the bearer token (auth sends it anyway)


CONFIGS = (
    Config("off", auth=False, tls=False),
    # The token alone (about a kilobyte a request) on a server without auth: what of auth's
    # cost is the client's bigger request rather than the check.
    Config("off+token", auth=False, tls=False, token=True),
    Config("auth", auth=True, tls=False),
    Config("tls", auth=False, tls=True),
    Config("auth+tls", auth=True, tls=True),
)


def _free_port() -> int:
    import socket  # noqa: PLC0415 - only here

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Server:
    """Our server in one configuration, in its own process group."""

    def __init__(self, config: Config, model: Path, work: Path, env: dict[str, str]) -> None:
        self.config = config
        self.port = _free_port()
        self.health_port = _free_port()
        args = [
            sys.executable, "-m", "modelserver",
            "--model-uri", f"file://{model}", "--model-name", MODEL,
            "--host", "127.0.0.1", "--port", str(self.port),
            "--health-port", str(self.health_port), "--workers", str(WORKERS),
            "--metrics-dir", str(work / f"metrics-{self.port}"),
            "--termination-log", str(work / "termination-log"),
        ]  # fmt: skip
        if config.auth:
            args += ["--auth", "kubernetes", "--auth-namespace", NAMESPACE]
        if config.tls:
            args += ["--tls-cert-file", str(work / "tls.crt")]
            args += ["--tls-key-file", str(work / "tls.key")]
        self.log = work / f"server-{config.name}.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    @property
    def url(self) -> str:
        return f"{'https' if self.config.tls else 'http'}://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.config.name} exited:\n{self.log.read_text()}")
            with contextlib.suppress(OSError):
                ready = f"http://127.0.0.1:{self.health_port}/v2/health/ready"
                with urllib.request.urlopen(ready, timeout=2) as answer:
                    if answer.status == 200:
                        return
            time.sleep(0.1)
        raise TimeoutError(f"{self.config.name} not ready:\n{self.log.read_text()}")

    def reviews(self) -> float:
        """Token reviews its workers asked the API server for."""
        metrics = f"http://127.0.0.1:{self.health_port}/metrics"
        with urllib.request.urlopen(metrics, timeout=5) as answer:
            text = answer.read().decode()
        found = re.findall(r"^modelserver_auth_reviews_total\{[^}]*\} (\S+)$", text, re.M)
        return sum(float(value) for value in found)

    def cpu_seconds(self) -> float:
        """CPU time of the server and its workers so far."""
        tree = psutil.Process(self.process.pid)
        total = 0.0
        for proc in (tree, *tree.children(recursive=True)):
            with contextlib.suppress(psutil.NoSuchProcess):
                times = proc.cpu_times()
                total += times.user + times.system
        return total

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def _certificate(work: Path) -> None:
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "1", "-subj", "/CN=localhost",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout", str(work / "tls.key"), "-out", str(work / "tls.crt"),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip


@contextlib.contextmanager
def _cluster(work: Path) -> Iterator[tuple[Path, str]]:
    """A local control plane with the caller's RBAC; its kubeconfig and the caller's token."""
    cluster = localcluster.Cluster(root=work / "cluster")
    started = cluster.up()
    try:
        cluster.kubectl("apply", "-f", "-", input=RBAC)
        token = cluster.kubectl(
            "create", "token", "caller", "-n", NAMESPACE, "--duration", "1h"
        ).stdout.strip()
        yield cluster.kubeconfig, token
    finally:
        if started:
            cluster.down()


def _measure(server: _Server, wrk: str, body: Path, seconds: float, token: str) -> dict[str, Any]:
    config = server.config
    headers = (f"Authorization: Bearer {token}",) if config.auth or config.token else ()
    cpu_before = server.cpu_seconds()
    result = loadgen.run_wrk(
        wrk=wrk,
        base_url=server.url,
        protocol="v1",
        model_name=MODEL,
        body=body,
        connections=CONNECTIONS,
        duration_s=seconds,
        threads=2,
        headers=headers,
    )
    cpu = server.cpu_seconds() - cpu_before
    return {
        "rps": result.ok_rps,
        # Answers per CPU-second of the server: what the work costs, steadier than req/s when
        # other processes take turns on the cores.
        "per_cpu_s": (result.requests - result.errors_status) / cpu if cpu > 0 else 0.0,
        "p99_ms": result.latency_us["p99"] / 1000,
        "p50_ms": result.latency_us["p50"] / 1000,
        "errors": result.errors,
    }


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench access", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="3 s runs, 2 rounds")
    parser.add_argument("--duration", type=float, default=None, help="seconds per run")
    parser.add_argument("--rounds", type=int, default=None, help="runs of each configuration")
    args = parser.parse_args(argv)
    seconds = args.duration or (3.0 if args.quick else 10.0)
    rounds = args.rounds or (2 if args.quick else 5)
    wrk = loadgen.wrk_path()
    if wrk is None:
        print(loadgen.INSTALL_HINT)
        return 2
    work = Path(tempfile.mkdtemp(prefix="bench-access-"))
    try:
        bench_models, payloads = models.prepare(work)
        model = next(m for m in bench_models if m.name == MODEL).path
        body = payloads.body("v1", "single")
        _certificate(work)
        with _cluster(work) as (kubeconfig, token):
            env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
            servers = [_Server(config, model, work, env) for config in CONFIGS]
            try:
                for server in servers:
                    server.wait_ready()
                result = _rounds(servers, wrk, body, token, seconds=seconds, rounds=rounds)
            finally:
                for server in servers:
                    server.stop()
        _report(result, seconds, rounds)
        return 0 if all(r["errors"] == 0 for r in result["runs"]) else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _rounds(
    servers: list[_Server], wrk: str, body: Path, token: str, *, seconds: float, rounds: int
) -> dict[str, Any]:
    for server in servers:  # warm-up: connections, caches, the first review per worker
        _measure(server, wrk, body, 2.0, token)
    warm_reviews = {s.config.name: s.reviews() for s in servers if s.config.auth}
    runs: list[dict[str, Any]] = []
    for index in range(rounds):
        for server in servers:
            measured = _measure(server, wrk, body, seconds, token)
            runs.append({"config": server.config.name, "round": index, **measured})
            print(
                f"round {index + 1}/{rounds} {server.config.name:9} "
                f"{measured['rps']:9.0f} req/s  {measured['per_cpu_s']:7.0f} per CPU-s  "
                f"p99 {measured['p99_ms']:6.2f} ms  "
                f"errors {measured['errors']}",
                flush=True,
            )
    reviews = {
        name: {"after_warmup": warm, "at_end": next(s for s in servers if s.config.name == name)
               .reviews()}
        for name, warm in warm_reviews.items()
    }  # fmt: skip
    return {"runs": runs, "reviews": reviews}


def _report(result: dict[str, Any], seconds: float, rounds: int) -> None:
    medians: dict[str, dict[str, float]] = {}
    for config in CONFIGS:
        mine = [r for r in result["runs"] if r["config"] == config.name]
        medians[config.name] = {
            "rps": statistics.median(r["rps"] for r in mine),
            "per_cpu_s": statistics.median(r["per_cpu_s"] for r in mine),
            "p99_ms": statistics.median(r["p99_ms"] for r in mine),
            "errors": sum(r["errors"] for r in mine),
        }
    base = medians["off"]
    print(
        f"\nour server, 2 workers, KServe V1 single row, c={CONNECTIONS}, "
        f"median of {rounds} runs of {seconds:g} s each (interleaved)"
    )
    print(
        f"{'config':10}{'req/s':>10}{'vs off':>9}{'per CPU-s':>11}{'vs off':>9}"
        f"{'p99 ms':>9}{'vs off':>9}{'errors':>8}"
    )
    for name, figures in medians.items():
        print(
            f"{name:10}{figures['rps']:10.0f}{figures['rps'] / base['rps']:9.2f}"
            f"{figures['per_cpu_s']:11.0f}{figures['per_cpu_s'] / base['per_cpu_s']:9.2f}"
            f"{figures['p99_ms']:9.2f}{figures['p99_ms'] / base['p99_ms']:9.2f}"
            f"{figures['errors']:8.0f}"
        )
    for name, counts in result["reviews"].items():
        print(
            f"{name}: token reviews after the warm-up {counts['after_warmup']:g}, at the end "
            f"{counts['at_end']:g} (each worker asks again once its decision is 60 s old)"
        )
    print("BENCH_ACCESS " + json.dumps({"medians": medians, **result}))


def main(argv: list[str] | None = None) -> int:
    return run(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
