"""Operations: worker processes, metrics, request ids in logs, and draining on SIGTERM."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import threading
import time
from pathlib import Path

import psutil

from .support import IRIS_X, Models, ServerProcess, post_json, request, v1_body


def test_two_workers_serve_from_separate_processes(iris_server: ServerProcess) -> None:
    children = psutil.Process(iris_server.pid).children()
    assert len(children) == 2
    pids = set()
    for index in range(40):
        response = post_json(
            iris_server.port,
            "/v1/models/iris:predict",
            v1_body(IRIS_X[:1]),
            headers={"X-Request-ID": f"spread-{index}"},
        )
        assert response.status == 200
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and len(pids) < 2:
        pids = {
            line["pid"]
            for line in iris_server.log_lines()
            if str(line.get("request_id", "")).startswith("spread-")
        }
        time.sleep(0.05)
    assert pids == {child.pid for child in children}


def test_request_id_is_echoed_and_logged(iris_server: ServerProcess) -> None:
    response = post_json(
        iris_server.port,
        "/v1/models/iris:predict",
        v1_body(IRIS_X[:1]),
        headers={"X-Request-ID": "trace-abc-123"},
    )
    assert response.headers["x-request-id"] == "trace-abc-123"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        logged = [
            line for line in iris_server.log_lines() if line.get("request_id") == "trace-abc-123"
        ]
        if logged:
            break
        time.sleep(0.05)
    (line,) = logged
    assert line["status"] == 200
    assert line["level"] == "INFO"
    assert line["message"] == "POST /v1/models/iris:predict 200"
    assert line["duration_ms"] >= 0


def test_a_request_without_id_gets_a_fresh_one(iris_server: ServerProcess) -> None:
    first = request(iris_server.port, "GET", "/v2/health/live").headers["x-request-id"]
    second = request(iris_server.port, "GET", "/v2/health/live").headers["x-request-id"]
    assert first
    assert first != second


def test_metrics_expose_requests_latency_batches_queue_and_load_time(
    iris_server: ServerProcess,
) -> None:
    post_json(iris_server.port, "/v2/models/iris/infer", {"inputs": []})
    post_json(iris_server.port, "/v1/models/iris:predict", v1_body(IRIS_X[:1]))
    time.sleep(0.6)  # every worker publishes its counts at least every half second
    response = request(iris_server.port, "GET", "/metrics")
    assert response.status == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.body.decode()
    for pattern in (
        r'modelserver_requests_total\{model="iris",protocol="v2",status="400"\} [1-9]',
        r'modelserver_request_duration_seconds_bucket\{le="0.005",model="iris",protocol="v1"\}',
        r'modelserver_batch_size_bucket\{le="1.0",model="iris"\}',
        r'modelserver_predict_duration_seconds_count\{model="iris"\}',
        r'modelserver_queue_depth\{model="iris"\} 0.0',
        r'modelserver_model_load_seconds\{model="iris"\} [0-9.]+(e-?\d+)?\n',
    ):
        assert re.search(pattern, text), pattern


def test_the_health_port_serves_every_workers_metrics(iris_server: ServerProcess) -> None:
    """Scrapers admitted to the health port only (the canary analysis, Prometheus) see the same
    counts as /metrics on the inference port, summed over both workers."""
    for _ in range(6):  # new connections: both workers answer some
        post_json(iris_server.port, "/v1/models/iris:predict", v1_body(IRIS_X[:1]))
    time.sleep(0.6)  # every worker publishes its counts at least every half second
    pattern = r'modelserver_requests_total\{model="iris",protocol="v1",status="200"\} ([0-9.]+)'
    on_health = request(iris_server.health_port, "GET", "/metrics")
    assert on_health.status == 200
    assert on_health.headers["content-type"].startswith("text/plain")
    health_count = re.search(pattern, on_health.body.decode())
    inference_count = re.search(pattern, request(iris_server.port, "GET", "/metrics").body.decode())
    assert health_count is not None
    assert inference_count is not None
    assert float(health_count.group(1)) == float(inference_count.group(1)) >= 6
    assert len(on_health.body) > 4096  # more than one probe answer's worth: sent whole
    missing = request(iris_server.health_port, "GET", "/v1/models/iris")
    assert missing.status == 404
    assert b"/metrics" in missing.body


def test_a_crashed_worker_is_replaced(models: Models, tmp_path: Path) -> None:
    server = ServerProcess(models.path("iris.joblib"), tmp_path, workers=2).start()
    try:
        server.wait_ready()
        parent = psutil.Process(server.pid)
        victim, survivor = parent.children()
        victim.kill()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            pids = {child.pid for child in parent.children()}
            if len(pids) == 2 and victim.pid not in pids:
                break
            time.sleep(0.05)
        assert survivor.pid in pids
        assert len(pids) == 2
        server.wait_ready()
        for _ in range(10):
            response = post_json(server.port, "/v1/models/iris:predict", v1_body(IRIS_X[:3]))
            assert response.json() == {"predictions": models.iris.predict(IRIS_X[:3]).tolist()}
        assert "worker exited unexpectedly; restarting" in server.log_text()
    finally:
        server.stop()
    assert server.wait_exit() == 0


def test_workers_exit_when_the_supervisor_is_killed(models: Models, tmp_path: Path) -> None:
    server = ServerProcess(models.path("iris.joblib"), tmp_path, workers=3).start()
    workers: list[psutil.Process] = []
    try:
        server.wait_ready()
        workers = psutil.Process(server.pid).children()
        assert len(workers) == 3
        os.kill(server.pid, signal.SIGKILL)  # the supervisor cannot tell its workers anything
        server.wait_exit()
        killed = time.monotonic()
        while any(map(is_running, workers)) or not all(
            map(port_is_free, (server.port, server.health_port))
        ):
            assert time.monotonic() - killed < 2, [w.pid for w in workers if is_running(w)]
            time.sleep(0.02)
    finally:
        for worker in filter(is_running, workers):  # a failed run leaves none behind
            worker.kill()


def is_running(process: psutil.Process) -> bool:
    """Whether the process runs (a zombie nobody reaped does not)."""
    try:
        return bool(process.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def port_is_free(port: int) -> bool:
    """Whether a new server could listen on the port of 127.0.0.1."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_sigterm_drains_without_failing_accepted_requests(models: Models, tmp_path: Path) -> None:
    """Eight clients keep sending on keep-alive connections while the server gets SIGTERM:
    readiness turns 503 at once, every request the server read is answered correctly, and the
    process exits 0 within the grace period."""
    server = ServerProcess(
        models.path("drain.joblib"),
        tmp_path,
        workers=2,
        args=("--drain-delay", "1.0", "--graceful-timeout", "10"),
    ).start()
    server.wait_ready()
    expected = {"predictions": models.slow.predict(IRIS_X[:2]).tolist()}
    body = json.dumps(v1_body(IRIS_X[:2]))
    stop = threading.Event()
    results: list[dict[str, int]] = []
    failures: list[str] = []
    sigterm_at: list[float] = []

    def client() -> None:
        counts = {"ok": 0, "ok_after_sigterm": 0, "closed_by_server": 0}
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=15)
        while not stop.is_set():
            try:
                connection.request("POST", "/v1/models/iris:predict", body)
                response = connection.getresponse()
                answer = response.read()
            except (ConnectionError, http.client.RemoteDisconnected) as error:
                # The server closed the connection before reading this request: not accepted.
                if not sigterm_at:
                    failures.append(f"connection error before SIGTERM: {error!r}")
                counts["closed_by_server"] += 1
                break
            if response.status != 200 or json.loads(answer) != expected:
                failures.append(f"{response.status}: {answer!r}")
                break
            counts["ok"] += 1
            if sigterm_at:
                counts["ok_after_sigterm"] += 1
            if response.getheader("Connection") == "close":
                break
        connection.close()
        results.append(counts)

    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    sigterm_at.append(time.monotonic())
    server.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    time.sleep(0.2)
    readiness = request(server.port, "GET", "/v2/health/ready")
    liveness = request(server.port, "GET", "/v2/health/live")
    exit_code = server.wait_exit(timeout=20)
    exited_after = time.monotonic() - sigterm_at[0]
    stop.set()
    for thread in threads:
        thread.join(10)
    assert failures == []
    assert readiness.status == 503
    assert liveness.status == 200
    assert exit_code == 0
    assert exited_after < 1.0 + 10
    assert sum(r["ok"] for r in results) > 8
    # The drain delay kept serving: requests sent after SIGTERM were answered.
    assert sum(r["ok_after_sigterm"] for r in results) > 0
    assert "draining" in server.log_text()
