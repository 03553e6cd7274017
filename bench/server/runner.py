"""Runs the server benchmark: `python -m bench server [--quick] [options]`."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from bench.server import attack as attack_module
from bench.server import loadgen, models, report, servers, venvs

REPO_ROOT = Path(__file__).resolve().parents[2]
MB = 1024 * 1024
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OPENBLAS_CORETYPE", "MKL_NUM_THREADS")


@dataclass(frozen=True)
class Scenario:
    name: str
    shape: str  # payload: single | batch64
    rows: int
    connections: int
    # Measured twice, without and then with hostile connections active (bench.server.attack):
    # recorded as "<name> off" and "<name> on".
    attack: bool = False

    def labels(self) -> list[str]:
        """The scenario names its runs are recorded under."""
        return [f"{self.name} off", f"{self.name} on"] if self.attack else [self.name]


SCENARIOS = (
    Scenario("single-c1", "single", 1, 1),
    Scenario("single-c8", "single", 1, 8),
    Scenario("single-c64", "single", 1, 64),
    Scenario("batch64-c8", "batch64", models.BATCH_ROWS, 8),
    Scenario("attack-c8", "single", 1, 8, attack=True),
)
ATTACK_READY_TIMEOUT_S = 30.0  # the attackers must be in place this soon, or the run fails


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench server",
        description="Benchmark our model server against KServe's sklearn server and MLServer.",
    )
    p.add_argument("--quick", action="store_true", help="short runs (3 s, 1 s warmup)")
    p.add_argument("--duration", type=float, help="seconds per measured run (default 10)")
    p.add_argument("--warmup", type=float, help="seconds of warmup before each run (default 3)")
    p.add_argument(
        "--servers",
        default="ours,kserve,mlserver",
        help="comma-separated subset of ours,kserve,mlserver (default: all)",
    )
    p.add_argument("--models", default="pipeline,forest", help="subset of pipeline,forest")
    p.add_argument(
        "--scenarios",
        default=",".join(s.name for s in SCENARIOS),
        help="subset of " + ",".join(s.name for s in SCENARIOS),
    )
    p.add_argument(
        "--wrk-threads", type=int, default=1, help="wrk threads (default 1: leave CPU to servers)"
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure every scenario this many times; tables show the medians (default 1)",
    )
    p.add_argument("--ready-timeout", type=float, default=180.0, help="seconds to wait for ready")
    p.add_argument(
        "--ours-python",
        default=sys.executable,
        help="interpreter that runs `-m modelserver` (default: this one)",
    )
    p.add_argument("--out-dir", type=Path, default=REPO_ROOT / ".bench", help="results folder")
    args = p.parse_args(argv)
    if args.duration is None:
        args.duration = 3.0 if args.quick else 10.0
    if args.warmup is None:
        args.warmup = 1.0 if args.quick else 3.0
    return args


def _subset(value: str, allowed: list[str], what: str) -> list[str]:
    chosen = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in chosen if v not in allowed]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)} (choose from {', '.join(allowed)})")
    return [a for a in allowed if a in chosen]


def _git_commit() -> str:
    done = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() or "unknown"


def _ours_source() -> dict[str, Any]:
    """Which server code 'ours' was: commit, uncommitted changes, hash of its sources."""
    src = REPO_ROOT / "server_image" / "modelserver"
    digest = hashlib.sha256()
    for path in sorted(src.rglob("*.py")):
        digest.update(str(path.relative_to(src)).encode() + b"\0" + path.read_bytes())
    dirty = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--", str(src)],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "commit": _git_commit(),
        "uncommitted_changes": bool(dirty),
        "sha256": digest.hexdigest(),
    }


def _cpu_busy_seconds() -> float:
    t = psutil.cpu_times()
    return sum(getattr(t, f, 0.0) for f in ("user", "nice", "system", "steal"))


def _self_cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _predictions(protocol: str, answer: Any) -> list[Any] | None:
    """The predicted labels in a V1 or V2 answer, or None if the answer has none."""
    if not isinstance(answer, dict):
        return None
    if protocol == "v1":
        preds = answer.get("predictions")
        return preds if isinstance(preds, list) else None
    outputs = answer.get("outputs")
    if not isinstance(outputs, list) or not outputs:
        return None
    chosen = next((o for o in outputs if o.get("name") == "predict"), outputs[0])
    data = chosen.get("data") if isinstance(chosen, dict) else None
    return data if isinstance(data, list) else None


def _same_labels(got: list[Any], want: list[int]) -> bool:
    if len(got) != len(want):
        return False
    for g, w in zip(got, want, strict=True):
        if isinstance(g, bool) or not isinstance(g, int | float) or g != w:
            return False
    return True


def check_predictions(
    server: servers.ServerProcess, protocol: str, payloads: models.Payloads
) -> str | None:
    """None when every body the load will send gets the right labels, else what went wrong."""
    path = (
        f"/v1/models/{server.model.name}:predict"
        if protocol == "v1"
        else f"/v2/models/{server.model.name}/infer"
    )
    for shape in ("single", "batch64"):
        lines = payloads.body(protocol, shape).read_bytes().splitlines()
        wanted = server.model.expected_answers(shape)
        for number, (body, want) in enumerate(zip(lines, wanted, strict=True), start=1):
            try:
                status, answer = servers.http_post_json(server.base_url + path, body)
            except OSError as exc:
                return f"{protocol} {shape} body {number}: {exc}"
            got = _predictions(protocol, answer)
            if status != 200 or got is None or not _same_labels(got, want):
                shown = str(answer)[:300]
                return (
                    f"{protocol} {shape} body {number}: HTTP {status}, answer {shown!r}, "
                    f"want {want[:8]}"
                )
    return None


def measure(
    *,
    args: argparse.Namespace,
    wrk: str,
    server: servers.ServerProcess,
    protocol: str,
    scenario: Scenario,
    payloads: models.Payloads,
    attacked: bool = False,
) -> dict[str, Any]:
    body = payloads.body(protocol, scenario.shape)
    common = {
        "wrk": wrk,
        "base_url": server.base_url,
        "protocol": protocol,
        "model_name": server.model.name,
        "body": body,
        "connections": scenario.connections,
        "threads": args.wrk_threads,
    }
    rss_before = server.sample_memory()
    attacker = None
    if attacked:
        attacker = _start_attack(args, server, protocol, payloads)
    try:
        if args.warmup > 0:
            loadgen.run_wrk(duration_s=args.warmup, **common)
        busy0, srv0, self0 = _cpu_busy_seconds(), server.cpu_seconds(), _self_cpu_seconds()
        attack_cpu0 = _tree_cpu_seconds(attacker)
        sampler = _PeakRss(server) if attacked else None
        t0 = time.monotonic()
        res = loadgen.run_wrk(duration_s=args.duration, **common)
        wall = time.monotonic() - t0
        rss_peak = sampler.stop() if sampler is not None else None
        busy1, srv1, self1 = _cpu_busy_seconds(), server.cpu_seconds(), _self_cpu_seconds()
        attack_cpu = _tree_cpu_seconds(attacker) - attack_cpu0
    finally:
        attack = _finish_attack(attacker)
    server_cpu = max(srv1 - srv0, 0.0)
    other = (busy1 - busy0) - server_cpu - res.wrk_cpu_s - (self1 - self0) - attack_cpu
    lat = res.latency_us
    extra: dict[str, Any] = {}
    if attacked:
        extra = {
            "attack": attack,
            **_attack_counts(attack),
            "attack_cpu_cores": attack_cpu / wall,
            "rss_before_attack_mb": rss_before / MB,
            "rss_peak_attack_mb": None if rss_peak is None else rss_peak / MB,
            # Whether the server still answered its readiness check once the attackers left.
            "ready_after_attack": servers.http_get_status(
                server.base_url + servers.READY_PATH, timeout=5.0
            )
            == 200,
        }
    return {
        "server": server.kind.key,
        "protocol": protocol,
        "model": server.model.name,
        "scenario": scenario.labels()[-1] if attacked else scenario.labels()[0],
        "rows_per_request": scenario.rows,
        "connections": scenario.connections,
        "rps": res.ok_rps,
        "rows_per_s": res.ok_rps * scenario.rows,
        "requests": res.requests,
        "duration_s": res.duration_s,
        "p50_ms": lat["p50"] / 1000,
        "p90_ms": lat["p90"] / 1000,
        "p99_ms": lat["p99"] / 1000,
        "p999_ms": lat["p99.9"] / 1000,
        "max_ms": lat["max"] / 1000,
        "mean_ms": lat["mean"] / 1000,
        "errors": res.errors,
        "errors_status": res.errors_status,
        "errors_socket": res.errors_socket,
        "server_cpu_cores": server_cpu / wall,
        # Answers per CPU-second of the server: how much work one answer costs it,
        # which moves much less than req/s when other work takes CPU away.
        "rps_per_core": res.ok_rps * wall / server_cpu if server_cpu > 0 else None,
        "wrk_cpu_cores": res.wrk_cpu_s / wall,
        "other_cpu_cores": max(other, 0.0) / wall,
        "loadavg_1m_after": os.getloadavg()[0],
        **extra,
    }


def _attack_counts(attack: dict[str, Any] | None) -> dict[str, int]:
    """The attackers' figures as flat numbers (the summary keeps numbers only)."""
    if attack is None:
        return {}
    kinds = attack["kinds"]
    out: dict[str, int] = {}
    for kind in ("slow_headers", "non_readers", "giant_bodies"):
        stats = kinds[kind]
        out[f"atk_{kind}_opened"] = int(stats["opened"])
        out[f"atk_{kind}_closed"] = int(stats["closed_by_server"])
        out[f"atk_{kind}_mb_sent"] = round(stats["bytes_sent"] / MB)
    out["atk_non_readers_requests"] = int(kinds["non_readers"]["requests_sent"])
    return out


def _inference_path(protocol: str, model_name: str) -> str:
    if protocol == "v1":
        return f"/v1/models/{model_name}:predict"
    return f"/v2/models/{model_name}/infer"


def _start_attack(
    args: argparse.Namespace,
    server: servers.ServerProcess,
    protocol: str,
    payloads: models.Payloads,
) -> subprocess.Popen[str]:
    """The hostile connections (bench.server.attack), in a process of their own, in place (it said
    so) before the warmup, and kept up to the end of the measured run."""
    seconds = ATTACK_READY_TIMEOUT_S + args.warmup + args.duration + 2.0
    cmd = [
        sys.executable,
        str(Path(attack_module.__file__)),
        "--port",
        str(server.launch.port),
        "--path",
        _inference_path(protocol, server.model.name),
        "--body",
        str(payloads.body(protocol, "attack")),
        "--seconds",
        f"{seconds:g}",
    ]
    attacker = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT
    )
    assert attacker.stdout is not None
    ready = threading.Event()

    def wait_ready() -> None:
        assert attacker.stdout is not None
        if attacker.stdout.readline().strip() == attack_module.READY_LINE:
            ready.set()

    waiter = threading.Thread(target=wait_ready, daemon=True)
    waiter.start()
    if not ready.wait(ATTACK_READY_TIMEOUT_S):
        attacker.kill()
        _, err = attacker.communicate()
        raise RuntimeError(f"the attackers were not in place in time: {err[-2000:]}")
    return attacker


def _finish_attack(attacker: subprocess.Popen[str] | None) -> dict[str, Any] | None:
    """The attackers' own account (connections, bytes, statuses seen), once they are done."""
    if attacker is None:
        return None
    # It has said it is ready: what is left of its time is its tail, not needed any more.
    attacker.terminate()
    try:
        out, err = attacker.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        attacker.kill()
        out, err = attacker.communicate()
    line = next((ln for ln in out.splitlines() if ln.startswith(attack_module.RESULT_PREFIX)), None)
    if line is None:
        raise RuntimeError(f"the attack process failed (exit {attacker.returncode}): {err[-2000:]}")
    result: dict[str, Any] = json.loads(line[len(attack_module.RESULT_PREFIX) :])
    return result


def _tree_cpu_seconds(proc: subprocess.Popen[str] | None) -> float:
    if proc is None:
        return 0.0
    try:
        t = psutil.Process(proc.pid).cpu_times()
    except psutil.Error:
        return 0.0
    return float(t.user + t.system)


class _PeakRss:
    """Samples the server's process-tree RSS every 0.2 s until stopped; returns the peak."""

    def __init__(self, server: servers.ServerProcess) -> None:
        self._server = server
        self._peak = server.rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="attack-rss", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            self._peak = max(self._peak, self._server.rss_bytes())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5)
        return max(self._peak, self._server.rss_bytes())


def _print_run(r: dict[str, Any]) -> None:
    print(
        f"    {r['server']:<8} {r['protocol']} {r['scenario']:<13} {r['rps']:>9,.0f} req/s  "
        f"p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms  errors {r['errors']}  "
        f"(server {r['server_cpu_cores']:.2f} cores, wrk {r['wrk_cpu_cores']:.2f}, "
        f"other {r['other_cpu_cores']:.2f})",
        flush=True,
    )
    if r.get("attack"):
        print(f"      {report.attack_line(r)}", flush=True)


@dataclass
class Live:
    """A started server, with the protocols on which it answered correctly."""

    server: servers.ServerProcess
    info: dict[str, Any]
    protocols: list[str] = field(default_factory=list)
    failed: bool = False


def start_and_check(
    *, args: argparse.Namespace, server: servers.ServerProcess, payloads: models.Payloads
) -> Live:
    info: dict[str, Any] = {
        "server": server.kind.key,
        "model": server.model.name,
        "command": server.launch.cmd,
        "log": str(server.log_path),
    }
    live = Live(server=server, info=info)
    print(f"  starting {server.kind.label}", flush=True)
    try:
        cold = server.start(args.ready_timeout)
        info["cold_start_s"] = cold
        bad = {p: check_predictions(server, p, payloads) for p in server.kind.protocols}
        info["checks_before"] = bad
        info["processes"] = len(server.tree())
        info["rss_ready_mb"] = server.sample_memory() / MB
        info["pss_ready_mb"] = server.pss_bytes() / MB
        print(
            f"    ready in {cold:.2f} s, {info['processes']} processes, "
            f"RSS {info['rss_ready_mb']:.0f} MB",
            flush=True,
        )
        for protocol, problem in bad.items():
            if problem:
                print(f"    {protocol}: WRONG ANSWER, not measured: {problem}", flush=True)
            else:
                live.protocols.append(protocol)
        server.start_sampling()
    except (servers.StartError, RuntimeError, OSError) as exc:
        _fail(live, exc)
    return live


def _fail(live: Live, exc: BaseException) -> None:
    live.failed = True
    live.info["status"] = "failed"
    live.info["error"] = str(exc)
    print(f"    {live.server.kind.key} FAILED: {exc}", flush=True)
    live.server.stop()


def finish(live: Live, payloads: models.Payloads, runs: list[dict[str, Any]]) -> None:
    """Check the answers again, note the memory, stop the server."""
    server, info = live.server, live.info
    try:
        if live.failed:
            return
        server.stop_sampling()
        after = {p: check_predictions(server, p, payloads) for p in server.kind.protocols}
        info["checks_after"] = after
        info["rss_peak_mb"] = max(server.memory.rss_max, server.sample_memory()) / MB
        info["pss_after_mb"] = server.pss_bytes() / MB
        before = info.get("checks_before", {})
        wrong = [p for p in server.kind.protocols if before.get(p) or after[p]]
        info["status"] = "wrong answers: " + ",".join(wrong) if wrong else "ok"
        if any(after.values()):
            # Numbers from a server that answers wrongly afterwards are not kept.
            for run in runs:
                if run["server"] == server.kind.key and run["model"] == server.model.name:
                    run["invalid"] = "wrong answers after the load"
    finally:
        server.stop()


def bench_model(
    *,
    args: argparse.Namespace,
    wrk: str,
    procs: list[servers.ServerProcess],
    scenarios: list[Scenario],
    payloads: models.Payloads,
    runs: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """All servers of one model: started one after the other, then measured in turns.

    Taking turns scenario by scenario keeps each ratio's two runs a few seconds
    apart, so slow changes in the machine's other load hit both sides alike.
    """
    lives: list[Live] = []
    try:
        for proc in procs:
            lives.append(start_and_check(args=args, server=proc, payloads=payloads))
        for round_no in range(args.rounds):
            if args.rounds > 1:
                print(f"  round {round_no + 1} of {args.rounds}", flush=True)
            for scenario in scenarios:
                for live in lives:
                    for protocol in live.protocols:
                        if live.failed:
                            break
                        _measure_into(
                            args=args,
                            wrk=wrk,
                            live=live,
                            protocol=protocol,
                            scenario=scenario,
                            payloads=payloads,
                            runs=runs,
                            round_no=round_no,
                        )
    finally:
        for live in lives:
            finish(live, payloads, runs)
    return [live.info for live in lives]


def _measure_into(
    *,
    args: argparse.Namespace,
    wrk: str,
    live: Live,
    protocol: str,
    scenario: Scenario,
    payloads: models.Payloads,
    runs: list[dict[str, Any]],
    round_no: int,
) -> None:
    server = live.server
    try:
        if not server.alive():
            raise servers.StartError(f"{server.kind.key} died; log:\n{server.log_tail()}")
        for attacked in (False, True) if scenario.attack else (False,):
            run = measure(
                args=args,
                wrk=wrk,
                server=server,
                protocol=protocol,
                scenario=scenario,
                payloads=payloads,
                attacked=attacked,
            )
            run["round"] = round_no
            runs.append(run)
            _print_run(run)
            if attacked and not server.alive():
                raise servers.StartError(f"{server.kind.key} died under attack")
    except (servers.StartError, RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        _fail(live, exc)
        return


def environment(
    args: argparse.Namespace, wrk: str, peer_pythons: dict[str, Path]
) -> dict[str, Any]:
    watched = ["scikit-learn", "numpy", "joblib", "uvicorn", "uvloop", "fastapi", "starlette"]
    versions = {"ours": venvs.installed_versions(args.ours_python, ["modeldeploy", *watched])}
    extra = {"kserve": ["kserve", "kserve-storage"], "mlserver": ["mlserver", "mlserver-sklearn"]}
    for key, py in peer_pythons.items():
        versions[key] = venvs.installed_versions(py, [*extra[key], *watched])
    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "git_commit": _git_commit(),
        "ours_source": _ours_source(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_gb": round(psutil.virtual_memory().total / 1024**3, 1),
        "wrk": loadgen.wrk_version(wrk),
        "versions": versions,
        "threads_env": {k: os.environ[k] for k in THREAD_ENV if k in os.environ},
    }


def _loadavg_text(values: tuple[float, float, float]) -> str:
    return " ".join(f"{x:.2f}" for x in values)


def _prepare_peers(wanted: list[str], logs: Path, skipped: dict[str, str]) -> dict[str, Path]:
    """Create or reuse the peers' environments; returns key -> venv directory."""
    peer_venvs: dict[str, Path] = {}
    for key, peer in venvs.peer_envs().items():
        if key not in wanted:
            continue
        try:
            peer_venvs[key] = venvs.ensure(peer, logs / f"pip-{peer.dirname}.log")
        except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
            skipped[key] = f"environment not ready: {exc}"
            print(f"  skipping {key}: {exc}", flush=True)
    return peer_venvs


def _launch(
    key: str,
    *,
    args: argparse.Namespace,
    peer_venvs: dict[str, Path],
    model: models.BenchModel,
    taken: set[int],
    work: Path,
) -> servers.Launch:
    if key == "ours":
        return servers.launch_ours(args.ours_python, model, taken, work)
    if key == "kserve":
        return servers.launch_kserve(peer_venvs[key], model, taken, work)
    return servers.launch_mlserver(peer_venvs[key], model, taken, work)


def _print_summary(result: dict[str, Any]) -> None:
    print()
    print("Throughput and latency (req/s counts answers without an error status)")
    print(report.runs_table(result["summary"]))
    attacked = report.attack_rows(result["summary"])
    if attacked:
        print()
        print(
            "Under attack: well-behaved clients (wrk, 1 row, c=8) without and with hostile "
            "connections (8 slow headers, 4 non-readers, 2 giant bodies)"
        )
        print(report.attack_table(attacked))
    print()
    print("Start-up and memory (sums over each server's process tree)")
    print(report.servers_table(result["servers"]))
    if result["ratios"]:
        print()
        print("Ours / peer, both on the peer's protocol")
        print("(req/s ratio: higher is better; p50 and p99 ratios: lower is better)")
        print(report.ratios_table(result["ratios"]))
        print()
        print("Targets (issues 4 and 10, against KServe; reported, not asserted)")
        print(report.targets_table(result["targets"]))
    for key, why in result["skipped"].items():
        print(f"not measured: {key}: {why}")
    load = result["loadavg"]
    print(f"load average: start {_loadavg_text(load['start'])}, end {_loadavg_text(load['end'])}")


def run(argv: list[str]) -> int:
    args = parse_args(argv)
    wanted = _subset(args.servers, ["ours", "kserve", "mlserver"], "servers")
    model_names = _subset(args.models, ["pipeline", "forest"], "models")
    scenario_names = _subset(args.scenarios, [s.name for s in SCENARIOS], "scenarios")
    scenarios = [s for s in SCENARIOS if s.name in scenario_names]

    wrk = loadgen.wrk_path()
    if wrk is None:
        print(loadgen.INSTALL_HINT, file=sys.stderr)
        return 2

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out_dir: Path = args.out_dir
    work = out_dir / "server-work"
    logs = out_dir / "logs" / f"server-{stamp}"
    load_start = os.getloadavg()
    print(
        f"server benchmark: {len(wanted)} servers x {len(model_names)} models x "
        f"{len(scenarios)} scenarios, {args.duration:g} s runs after {args.warmup:g} s warmup, "
        f"{servers.WORKERS} workers each",
        flush=True,
    )
    print(f"load average at start: {_loadavg_text(load_start)} ({os.cpu_count()} cores)")
    if load_start[0] > 0.5 * (os.cpu_count() or 1):
        print("  note: the machine is busy; absolute numbers will be low, compare the ratios")

    bench_models, payloads = models.prepare(work)
    skipped: dict[str, str] = {}
    peer_venvs = _prepare_peers(wanted, logs, skipped)
    if "ours" in wanted:
        ok, why = servers.ours_available(args.ours_python)
        if not ok:
            skipped["ours"] = f"`{args.ours_python} -m modelserver --help` failed: {why}"
            print(f"  skipping ours: {skipped['ours']}", flush=True)

    runs: list[dict[str, Any]] = []
    server_infos: list[dict[str, Any]] = []
    taken: set[int] = set()
    chosen_models = [m for m in bench_models if m.name in model_names]
    for model in chosen_models:
        print(f"model {model.name} ({model.description}):", flush=True)
        procs = [
            servers.ServerProcess(
                kind=servers.KINDS[key],
                model=model,
                launch=_launch(
                    key, args=args, peer_venvs=peer_venvs, model=model, taken=taken, work=work
                ),
                log_path=logs / f"{key}-{model.name}.log",
            )
            for key in wanted
            if key not in skipped
        ]
        server_infos.extend(
            bench_model(
                args=args,
                wrk=wrk,
                procs=procs,
                scenarios=scenarios,
                payloads=payloads,
                runs=runs,
            )
        )

    valid = report.summarize([r for r in runs if "invalid" not in r])
    peer_pythons = {k: venvs.python_of(v) for k, v in peer_venvs.items()}
    result = {
        "kind": "server-benchmark",
        "timestamp": stamp,
        "settings": {
            "quick": args.quick,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "workers": servers.WORKERS,
            "wrk_threads": args.wrk_threads,
            "rounds": args.rounds,
            "wrk_timeout_s": loadgen.REQUEST_TIMEOUT_S,
            "dataset": models.DATASET,
            "models": {m.name: m.description for m in chosen_models},
            "scenarios": [s.__dict__ for s in scenarios],
        },
        "environment": environment(args, wrk, peer_pythons),
        "loadavg": {"start": load_start, "end": os.getloadavg()},
        "skipped": skipped,
        "servers": server_infos,
        "runs": runs,
        "summary": report.summarize(runs),
        "ratios": report.ratios(
            valid, [m.name for m in chosen_models], [n for s in scenarios for n in s.labels()]
        ),
        "targets": report.targets(valid),
    }
    _print_summary(result)
    out_dir.mkdir(parents=True, exist_ok=True)
    out_file = out_dir / f"server-{stamp}.json"
    out_file.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"results: {out_file}")
    failed = [s for s in server_infos if s.get("status") != "ok"]
    return 1 if failed else 0


def _terminate(signum: int, _frame: object) -> None:
    # Turn SIGTERM into an exception so the servers are stopped on the way out.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _terminate)
    return run(sys.argv[1:] if argv is None else argv)
