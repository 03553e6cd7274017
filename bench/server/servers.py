"""How each server is started, and the process handling the benchmark needs.

A server runs in its own session (process group), with its output sent to a log
file. `ServerProcess` times the cold start (process start to the first 200 from
`GET /v2/health/ready`), samples the memory of the whole process tree, counts its
CPU time, and stops it: SIGTERM to the group, then SIGKILL to whatever of the
tree it started is still alive.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench.server.models import BenchModel

WORKERS = 2
PEERS_DIR = Path(__file__).resolve().parent / "peers"
READY_PATH = "/v2/health/ready"


@dataclass(frozen=True)
class Launch:
    cmd: list[str]
    env: dict[str, str]
    cwd: Path
    port: int


@dataclass(frozen=True)
class ServerKind:
    key: str  # ours | kserve | mlserver
    label: str
    protocols: tuple[str, ...]  # v1 (KServe V1) and/or v2 (Open Inference Protocol)


OURS = ServerKind("ours", "modelserver (ours)", ("v1", "v2"))
KSERVE = ServerKind("kserve", "KServe sklearnserver 0.21.0", ("v1",))
MLSERVER = ServerKind("mlserver", "MLServer 1.7.1 + mlserver-sklearn", ("v2",))
KINDS = {k.key: k for k in (OURS, KSERVE, MLSERVER)}


def free_port(taken: set[int]) -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in taken:
            taken.add(port)
            return port


def _base_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def launch_ours(python: str, model: BenchModel, taken: set[int], workdir: Path) -> Launch:
    port = free_port(taken)
    cmd = [
        python,
        "-m",
        "modelserver",
        "--model-uri",
        model.path.as_uri(),
        "--model-name",
        model.name,
        "--model-format",
        "joblib",
        "--port",
        str(port),
        "--workers",
        str(WORKERS),
    ]
    # Ours keeps the caller's environment as it is (PYTHONPATH included). The probes' own port is
    # given by environment, which an older server (a before/after run) ignores.
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["HEALTH_PORT"] = str(free_port(taken))
    return Launch(cmd=cmd, env=env, cwd=workdir, port=port)


def launch_kserve(venv: Path, model: BenchModel, taken: set[int], workdir: Path) -> Launch:
    port, grpc_port = free_port(taken), free_port(taken)
    cmd = [
        str(venv / "bin" / "python"),
        "-m",
        "sklearnserver_equiv",
        "--model_dir",
        str(model.directory),
        "--model_name",
        model.name,
        "--http_port",
        str(port),
        "--grpc_port",
        str(grpc_port),
        "--workers",
        str(WORKERS),
    ]
    env = _base_env()
    env["PYTHONPATH"] = str(PEERS_DIR)
    return Launch(cmd=cmd, env=env, cwd=workdir, port=port)


def launch_mlserver(venv: Path, model: BenchModel, taken: set[int], workdir: Path) -> Launch:
    port, grpc_port, metrics_port = free_port(taken), free_port(taken), free_port(taken)
    repo = workdir / "mlserver" / model.name
    model_dir = repo / model.name
    model_dir.mkdir(parents=True, exist_ok=True)
    settings = {
        "host": "127.0.0.1",
        "http_port": port,
        "grpc_port": grpc_port,
        "metrics_port": metrics_port,
        # MLServer's HTTP front end is one process; inference runs in this many
        # worker processes (its default is 1).
        "parallel_workers": WORKERS,
    }
    model_settings = {
        "name": model.name,
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": str(model.path)},
    }
    (repo / "settings.json").write_text(json.dumps(settings, indent=2))
    (model_dir / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
    cmd = [str(venv / "bin" / "mlserver"), "start", str(repo)]
    return Launch(cmd=cmd, env=_base_env(), cwd=repo, port=port)


def ours_available(python: str) -> tuple[bool, str]:
    """Whether `python -m modelserver --help` works (the server is being written)."""
    try:
        done = subprocess.run(
            [python, "-m", "modelserver", "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    if done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines()
        return False, last[-1] if last else f"exit code {done.returncode}"
    return True, ""


# --- HTTP -------------------------------------------------------------------


def http_get_status(url: str, timeout: float = 1.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError):
        return 0


def http_post_json(url: str, body: bytes, timeout: float = 30.0) -> tuple[int, Any]:
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            status, raw = int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = int(exc.code), exc.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw[:500].decode(errors="replace")


# --- processes --------------------------------------------------------------


class StartError(RuntimeError):
    pass


@dataclass
class MemoryStats:
    rss_max: int = 0
    samples: int = 0


@dataclass
class ServerProcess:
    kind: ServerKind
    model: BenchModel
    launch: Launch
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    cold_start_s: float | None = None
    memory: MemoryStats = field(default_factory=MemoryStats)
    _seen: dict[int, psutil.Process] = field(default_factory=dict)
    _sampler: threading.Thread | None = None
    _stop_sampling: threading.Event = field(default_factory=threading.Event)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.launch.port}"

    def start(self, ready_timeout: float) -> float:
        """Start the server and wait for readiness; returns the cold start in seconds."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.started_at = time.monotonic()
            self.proc = subprocess.Popen(
                self.launch.cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.launch.env,
                cwd=self.launch.cwd,
                start_new_session=True,
            )
        ready_url = self.base_url + READY_PATH
        deadline = self.started_at + ready_timeout
        while time.monotonic() < deadline:
            if http_get_status(ready_url, timeout=1.0) == 200:
                self.cold_start_s = time.monotonic() - self.started_at
                self._remember_tree()
                return self.cold_start_s
            if self.proc.poll() is not None:
                raise StartError(
                    f"{self.kind.key} exited with code {self.proc.returncode} before it was "
                    f"ready; last lines of {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.02)
        raise StartError(
            f"{self.kind.key} was not ready after {ready_timeout:.0f} s; last lines of "
            f"{self.log_path}:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join("    " + line for line in text.splitlines()[-lines:])

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tree(self) -> list[psutil.Process]:
        """The server's processes: the one we started and all its descendants."""
        if self.proc is None:
            return []
        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []
        for p in procs:
            self._seen.setdefault(p.pid, p)
        return procs

    def _remember_tree(self) -> None:
        self.tree()

    def rss_bytes(self) -> int:
        total = 0
        for p in self.tree():
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total

    def pss_bytes(self) -> int:
        """Proportional set size: shared pages divided among the processes sharing them."""
        total = 0
        for p in self.tree():
            with contextlib.suppress(psutil.Error, AttributeError):
                total += p.memory_full_info().pss
        return total

    def cpu_seconds(self) -> float:
        total = 0.0
        for p in self.tree():
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
        return total

    def sample_memory(self) -> int:
        rss = self.rss_bytes()
        self.memory.rss_max = max(self.memory.rss_max, rss)
        self.memory.samples += 1
        return rss

    def start_sampling(self, interval: float = 0.5) -> None:
        def loop() -> None:
            while not self._stop_sampling.wait(interval):
                self.sample_memory()

        self._stop_sampling.clear()
        self._sampler = threading.Thread(target=loop, name="rss-sampler", daemon=True)
        self._sampler.start()

    def stop_sampling(self) -> None:
        self._stop_sampling.set()
        if self._sampler is not None:
            self._sampler.join(timeout=5)
            self._sampler = None

    def stop(self, grace: float = 15.0) -> None:
        self.stop_sampling()
        if self.proc is None:
            return
        self.tree()  # note any late children before signalling
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=grace)
        leftovers = [p for p in self._seen.values() if _still_running(p)]
        if leftovers:
            _, alive = psutil.wait_procs(leftovers, timeout=3)
            for p in alive:
                with contextlib.suppress(psutil.Error):
                    p.kill()
            psutil.wait_procs(alive, timeout=3)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)


def _still_running(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def driver_python() -> str:
    return sys.executable
