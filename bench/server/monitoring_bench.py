"""The cost of monitoring, measured against the same server without it, in one run:
`python -m bench.server.monitoring_bench [--duration S] [--rounds N] [--connections C]`.

Variants of our server (2 workers, the benchmark's StandardScaler + LogisticRegression on 30
features, one-row V1 requests from wrk):
- `off`: no reference profile, no payload log (predictions are always counted per class);
- `drift`: with a reference profile (`python -m modelserver profile` of the training data): PSI,
  out-of-range and missing counts over a sliding window;
- `dead-sink`: the same as `drift` plus the payload log, every request sampled, its sink a port
  nobody listens on.
Rounds interleave the variants (off, drift, dead-sink, off, ...) so that a machine's drift in load
touches all alike. Reported, each the median over rounds of that round's ratio: requests/s of
drift / off (target >= 0.95), and p99 of dead-sink / drift (target <= 1.10: the payload log is the
only difference between them; dead-sink / off is printed too).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split

from bench.server import loadgen, models, servers

VARIANTS = ("off", "drift", "dead-sink")


def _profile(workdir: Path, model: models.BenchModel) -> Path:
    features, labels = load_breast_cancer(return_X_y=True)
    x_train, _, _, _ = train_test_split(
        features, labels, test_size=0.25, random_state=models.SEED, stratify=labels
    )
    np.save(workdir / "train.npy", x_train)
    out = workdir / "profile.json"
    command = ["-m", "modelserver", "profile", "--model", str(model.path)]
    subprocess.run(
        [sys.executable, *command, "--data", str(workdir / "train.npy"), "--out", str(out)],
        check=True,
        capture_output=True,
    )
    return out


def _server(
    variant: str, model: models.BenchModel, workdir: Path, profile: Path, taken: set[int]
) -> servers.ServerProcess:
    launch = servers.launch_ours(sys.executable, model, taken, workdir)
    extra: list[str] = []
    if variant in ("drift", "dead-sink"):
        extra += ["--reference-uri", str(profile)]
    if variant == "dead-sink":
        dead = servers.free_port(taken)
        extra += [
            "--payload-log-url",
            f"http://127.0.0.1:{dead}/",
            "--payload-log-max-queue",
            "1000",
        ]
    launch = servers.Launch(launch.cmd + extra, launch.env, launch.cwd, launch.port)
    return servers.ServerProcess(servers.OURS, model, launch, workdir / f"{variant}.log")


def _evidence(base_url: str, variant: str) -> str:
    """The metrics showing that the variant's monitoring ran (e.g. events dropped at a sink)."""
    with urllib.request.urlopen(base_url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    wanted = {
        "off": ("modelserver_predictions_total",),
        "drift": ("modelserver_drift_window_rows", "modelserver_feature_psi"),
        "dead-sink": ("modelserver_payload_log_events_total",),
    }[variant]
    shown = []
    for line in text.splitlines():
        if line.startswith(wanted) and 'feature="mean radius"' not in line:
            shown.append(line.split("{")[0].removeprefix("modelserver_") + line.split("}")[-1])
    return "; ".join(shown[:4])


def _wrk(
    wrk: str,
    server: servers.ServerProcess,
    *,
    model: models.BenchModel,
    body: Path,
    connections: int,
    seconds: float,
) -> dict[str, Any]:
    return {
        "wrk": wrk,
        "base_url": server.base_url,
        "protocol": "v1",
        "model_name": model.name,
        "body": body,
        "connections": connections,
        "duration_s": seconds,
        "threads": 1,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.server.monitoring_bench")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured run")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args(argv)
    wrk = loadgen.wrk_path()
    if wrk is None:
        print(loadgen.INSTALL_HINT)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-monitoring-") as tmp:
        workdir = Path(tmp)
        bench_models, payloads = models.prepare(workdir)
        model = next(m for m in bench_models if m.name == "pipeline")
        profile = _profile(workdir, model)
        body = payloads.body("v1", "single")
        rps: dict[str, list[float]] = {v: [] for v in VARIANTS}
        p99: dict[str, list[float]] = {v: [] for v in VARIANTS}
        # Server CPU per request: what monitoring costs even when other work shares the machine.
        cpu: dict[str, list[float]] = {v: [] for v in VARIANTS}
        taken: set[int] = set()
        c = args.connections
        for round_index in range(args.rounds):
            for variant in VARIANTS:
                server = _server(variant, model, workdir, profile, taken)
                server.start(ready_timeout=60)
                try:
                    loadgen.run_wrk(
                        **_wrk(
                            wrk, server, model=model, body=body, connections=c, seconds=args.warmup
                        )
                    )
                    cpu_before = server.cpu_seconds()
                    result = loadgen.run_wrk(
                        **_wrk(
                            wrk,
                            server,
                            model=model,
                            body=body,
                            connections=c,
                            seconds=args.duration,
                        )
                    )
                    cpu_us = (server.cpu_seconds() - cpu_before) / max(result.requests, 1) * 1e6
                    evidence = _evidence(server.base_url, variant)
                finally:
                    server.stop()
                if result.errors:
                    raise RuntimeError(f"{variant}: {result.errors} errors")
                rps[variant].append(result.ok_rps)
                p99[variant].append(result.latency_us["p99"])
                cpu[variant].append(cpu_us)
                print(
                    f"round {round_index + 1} {variant:>9}: {result.ok_rps:8.0f} req/s, "
                    f"p99 {result.latency_us['p99'] / 1000:6.2f} ms, "
                    f"server CPU {cpu_us:5.1f} us/req; "
                    f"{evidence}",
                    flush=True,
                )
    median_rps = {v: statistics.median(rps[v]) for v in VARIANTS}
    median_p99 = {v: statistics.median(p99[v]) for v in VARIANTS}
    median_cpu = {v: statistics.median(cpu[v]) for v in VARIANTS}

    def paired(measure: dict[str, list[float]], top: str, bottom: str) -> float:
        """The median of each round's ratio: a round's variants shared that round's load."""
        return statistics.median(a / b for a, b in zip(measure[top], measure[bottom], strict=True))

    figures = {
        "connections": args.connections,
        "rounds": args.rounds,
        "duration_s": args.duration,
        "rps": median_rps,
        "p99_ms": {v: median_p99[v] / 1000 for v in VARIANTS},
        "cpu_us_per_request": median_cpu,
        "drift_cpu_ratio": paired(cpu, "drift", "off"),
        "dead_sink_cpu_ratio": paired(cpu, "dead-sink", "drift"),
        "drift_throughput_ratio": paired(rps, "drift", "off"),
        "dead_sink_p99_ratio": paired(p99, "dead-sink", "drift"),
        "dead_sink_p99_ratio_vs_off": paired(p99, "dead-sink", "off"),
        "dead_sink_throughput_ratio": paired(rps, "dead-sink", "drift"),
    }
    print(
        f"drift on / off throughput: {figures['drift_throughput_ratio']:.3f} (target >= 0.95); "
        f"dead sink / drift p99: {figures['dead_sink_p99_ratio']:.3f} (target <= 1.10; "
        f"/ off: {figures['dead_sink_p99_ratio_vs_off']:.3f}); "
        f"server CPU per request, drift / off: {figures['drift_cpu_ratio']:.3f}, "
        f"dead sink / drift: {figures['dead_sink_cpu_ratio']:.3f}"
    )
    print("BENCH_MONITORING " + json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
