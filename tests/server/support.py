"""Helpers of the model server tests: real server processes on free ports, and HTTP calls."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.datasets import load_iris

HERE = Path(__file__).parent
# The server processes import `server.estimators_for_tests` from here to unpickle test models.
TESTS = HERE.parent
IRIS_X, IRIS_Y = load_iris(return_X_y=True)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def s3_server(host: str = "127.0.0.1") -> Iterator[str]:
    """moto's S3-compatible server in its own process on ``host``; yields its endpoint URL."""
    port = free_port(host)
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError):
                socket.create_connection((host, port), timeout=1).close()
                break
            assert time.monotonic() < deadline, "moto server did not start"
            time.sleep(0.1)
        yield f"http://{host}:{port}"
    finally:
        process.terminate()
        process.wait(10)


@dataclasses.dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    reason: str = ""

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | str | None = None,
    *,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> Response:
    """One request on a new connection."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=dict(headers or {}))
        response = connection.getresponse()
        return Response(
            response.status,
            {key.lower(): value for key, value in response.getheaders()},
            response.read(),
            response.reason,
        )
    finally:
        connection.close()


def post_json(port: int, path: str, payload: object, **kwargs: Any) -> Response:
    return request(port, "POST", path, json.dumps(payload), **kwargs)


def v1_body(rows: np.ndarray | list[list[float]], proba: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"instances": np.asarray(rows).tolist()}
    if proba:
        body["parameters"] = {"predict_proba": True}
    return body


def v2_body(rows: np.ndarray, proba: bool = False, datatype: str = "FP64") -> dict[str, Any]:
    rows = np.asarray(rows)
    body: dict[str, Any] = {
        "inputs": [
            {
                "name": "input-0",
                "shape": list(rows.shape),
                "datatype": datatype,
                "data": rows.ravel().tolist(),
            }
        ]
    }
    if proba:
        body["outputs"] = [{"name": "predict_proba"}]
    return body


class ServerProcess:
    """`python -m modelserver` in a subprocess, on a free port of 127.0.0.1."""

    def __init__(
        self,
        model: Path,
        tmp: Path,
        *,
        name: str = "iris",
        workers: int = 1,
        model_format: str = "joblib",
        args: tuple[str, ...] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.model = model
        self.name = name
        self.port = free_port()
        self.health_port = free_port()
        self.termination_log = tmp / f"termination-{self.port}.log"
        self.termination_log.touch()
        self.log_path = tmp / f"server-{self.port}.log"
        self.argv = [
            sys.executable,
            "-m",
            "modelserver",
            "--model-uri",
            f"file://{model}",
            "--model-name",
            name,
            "--model-format",
            model_format,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            str(workers),
            "--drain-delay",
            "0",
            "--termination-log",
            str(self.termination_log),
            "--metrics-dir",
            str(tmp / "metrics"),
            *args,
        ]
        self.env = {
            **os.environ,
            "PYTHONPATH": str(TESTS),
            "HEALTH_PORT": str(self.health_port),
            **(env or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ServerProcess:
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.log_text().splitlines():
            with contextlib.suppress(ValueError):
                lines.append(json.loads(line))
        return lines

    def wait_listening(self, timeout: float = 60.0) -> None:
        """Until the port accepts connections."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_running()
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1),
            ):
                return
            time.sleep(0.02)
        raise TimeoutError(f"server did not listen within {timeout}s:\n{self.log_text()}")

    def wait_ready(self, timeout: float = 60.0) -> ServerProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_running()
            with contextlib.suppress(OSError):
                if request(self.port, "GET", "/v2/health/ready", timeout=2).status == 200:
                    return self
            time.sleep(0.05)
        raise TimeoutError(f"server not ready within {timeout}s:\n{self.log_text()}")

    def wait_exit(self, timeout: float = 60.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def _check_running(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log_text()}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@contextlib.contextmanager
def running(servers: dict[str, ServerProcess]) -> Iterator[dict[str, ServerProcess]]:
    """Starts the servers together (importing scikit-learn takes a while), stops them after."""
    try:
        for server in servers.values():
            server.start()
        for server in servers.values():
            server.wait_ready()
        yield servers
    finally:
        for server in servers.values():
            server.stop()


def batch_counts(port: int) -> tuple[float, float, float]:
    """Predict calls, rows over all calls, and calls with a single row, from /metrics (after the
    half second in which every worker publishes its counts)."""
    time.sleep(0.6)
    text = request(port, "GET", "/metrics").body.decode()

    def value(pattern: str) -> float:
        match = re.search(pattern, text, re.MULTILINE)
        return float(match.group(1)) if match else 0.0

    return (
        value(r"^modelserver_batch_size_count\{[^}]*\} (\S+)$"),
        value(r"^modelserver_batch_size_sum\{[^}]*\} (\S+)$"),
        value(r'^modelserver_batch_size_bucket\{le="1.0"[^}]*\} (\S+)$'),
    )


@dataclasses.dataclass(frozen=True)
class Models:
    """Model files trained for the session, with the fitted objects to compare against."""

    folder: Path
    iris: Any
    forest: Any
    regressor: Any
    slow: Any

    def path(self, name: str) -> Path:
        return self.folder / name


def digest_of(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
