"""Hostile and heavy traffic against real server processes, with raw sockets where HTTP clients
would be too polite: endless heads, clients that never read, more work than memory holds, probes
under saturation, SIGTERM under keep-alive load, and a trickle of bad requests among good ones.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import select
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest

from modelserver.serving import options as serving_options

from .support import (
    IRIS_X,
    Models,
    ServerProcess,
    batch_counts,
    post_json,
    request,
    v1_body,
    v2_body,
)

MIB = 1024 * 1024
# The bound: what one attacking connection may cost the process tree.
PER_CONNECTION_BOUND = 32 * MIB


def tree_rss(pid: int) -> int:
    """Resident memory of a process and all its children."""
    parent = psutil.Process(pid)
    total = parent.memory_info().rss
    for child in parent.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            total += child.memory_info().rss
    return total


@contextlib.contextmanager
def started(server: ServerProcess) -> Iterator[ServerProcess]:
    server.start()
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def _connect(port: int, *, receive_buffer: int | None = None) -> socket.socket:
    sock = socket.socket()
    if receive_buffer is not None:
        # Set before connecting: the window the server may fill without the client reading.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.connect(("127.0.0.1", port))
    return sock


def _read_answer(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything the server sends until it closes (or `timeout` passes quietly)."""
    sock.settimeout(timeout)
    chunks = []
    with contextlib.suppress(TimeoutError, ConnectionError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _big_proba_request(rows: int = 8 * MIB // 19) -> bytes:
    """An ~8 MiB V1 request for the probabilities of many iris rows (4 features, 3 classes)."""
    x = np.tile(IRIS_X, (rows // len(IRIS_X) + 1, 1))[:rows]
    body = json.dumps(v1_body(x, proba=True), separators=(",", ":")).encode()
    return b"POST /v1/models/iris:predict HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%s" % (
        len(body),
        body,
    )


# -- 1. request line and headers are limited while they arrive ---------------------------------


@pytest.mark.parametrize(
    "head",
    [b"GET /v2/health/live?", b"GET /v2/health/live HTTP/1.1\r\nx-filler: "],
    ids=["request-line", "header-value"],
)
def test_an_endless_head_is_refused_with_431_as_it_arrives(
    servers: dict[str, ServerProcess], head: bytes
) -> None:
    """A client sends up to 8 MiB of request line or of one header value, 16 KiB at a time: the
    answer 431 comes once 64 KiB have passed (within one read of the server), not at the end."""
    server = servers["iris"]
    sock = _connect(server.port)
    sent = 0
    answered = False
    try:
        sock.sendall(head)
        while sent < 8 * MIB and not answered:
            with contextlib.suppress(ConnectionError):
                sock.sendall(b"a" * 16384)
                sent += 16384
            answered = bool(select.select([sock], [], [], 0.002)[0])
        answer = _read_answer(sock)
    finally:
        sock.close()
    assert answered, "no answer while 8 MiB of head arrived"
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert sent <= 64 * 1024 + 512 * 1024, f"answered only after {sent} bytes"
    assert b"connection: close" in answer.lower()


def test_an_endless_head_does_not_grow_memory(servers: dict[str, ServerProcess]) -> None:
    """Four connections each push 32 MiB of header value as fast as the server takes it."""
    server = servers["iris"]
    before = tree_rss(server.pid)
    peak = before

    def attack() -> None:
        sock = _connect(server.port)
        sock.settimeout(10)
        with contextlib.suppress(OSError):
            sock.sendall(b"GET / HTTP/1.1\r\nx-filler: ")
            for _ in range(32 * MIB // 65536):
                sock.sendall(b"b" * 65536)
        sock.close()

    threads = [threading.Thread(target=attack) for _ in range(4)]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        peak = max(peak, tree_rss(server.pid))
        time.sleep(0.02)
    assert peak - before <= 4 * PER_CONNECTION_BOUND
    assert request(server.port, "GET", "/v2/health/live").status == 200


# -- 2. clients that do not read ----------------------------------------------------------------


def _answered(port: int) -> float:
    """V1 requests answered with 200 so far, from /metrics."""
    text = request(port, "GET", "/metrics").body.decode()
    pattern = r'^modelserver_requests_total\{model="iris",protocol="v1",status="200"\} (\S+)$'
    match = re.search(pattern, text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_clients_that_never_read_are_bounded_and_aborted(models: Models, tmp_path: Path) -> None:
    """Four clients each send an ~8 MiB predict_proba request (a ~28 MB answer) and never read;
    a fifth pipelines requests without reading. Once their answers are made, the process tree
    holds at most 32 MiB per such connection (at its peak, while working, it stays under the 1 GiB
    the defaults assume); the server stops reading the pipeliner, and after the write timeout it
    aborts the connections (their answers stay cut)."""
    server = ServerProcess(
        models.path("iris.joblib"),
        tmp_path,
        workers=2,
        # All four admitted whichever worker gets them: this test is about answers not read.
        env={"WRITE_TIMEOUT_SECONDS": "6", "MAX_INFLIGHT_BYTES": str(64 * MIB)},
    )
    payload = _big_proba_request()
    with started(server):
        # Warm-up: one such request read normally, so that the allocators have grown once.
        _, _, body = payload.partition(b"\r\n\r\n")
        assert (
            request(server.port, "POST", "/v1/models/iris:predict", body, timeout=60).status == 200
        )
        time.sleep(1.0)
        before = tree_rss(server.pid)
        answered = _answered(server.port)
        attackers = [_connect(server.port, receive_buffer=4096) for _ in range(4)]
        piper = _connect(server.port, receive_buffer=4096)
        piper.setblocking(False)
        small = json.dumps(v1_body(IRIS_X[:50], proba=True)).encode()
        one = b"POST /v1/models/iris:predict HTTP/1.1\r\ncontent-length: %d\r\n\r\n%s" % (
            len(small),
            small,
        )
        peak = before
        pipelined = 0
        sending = [threading.Thread(target=sock.sendall, args=(payload,)) for sock in attackers]
        for thread in sending:
            thread.start()
        deadline = time.monotonic() + 60
        while _answered(server.port) < answered + 4 or any(t.is_alive() for t in sending):
            assert time.monotonic() < deadline, "the big requests were not answered"
            peak = max(peak, tree_rss(server.pid))
            time.sleep(0.05)
        for _ in range(20):  # then the pipeliner, for a second
            with contextlib.suppress(BlockingIOError, ConnectionError):
                pipelined += piper.send(one * 20)
            peak = max(peak, tree_rss(server.pid))
            time.sleep(0.05)
        held = tree_rss(server.pid) - before
        time.sleep(6 + 1)  # the write timeout, and the once-a-second check
        answers = [_read_answer(sock, timeout=3) for sock in attackers]
        for sock in [*attackers, piper]:
            sock.close()
        assert request(server.port, "GET", "/v2/health/live").status == 200
    assert held <= 5 * PER_CONNECTION_BOUND, f"{held / MIB:.0f} MiB held"
    assert peak < 1024 * MIB, f"peak {peak / MIB:.0f} MiB"
    for answer in answers:
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        assert len(body) < length, "a client that did not read for 6 s still got all its answer"
    assert pipelined < 64 * MIB, "the server kept reading pipelined requests it could not answer"


# -- 3. work in flight is capped ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("limit", "workers", "per_worker"),
    [("1073741824\n", 2, 16 * MIB), ("max\n", 1, None), ("268435456\n", 4, 2 * MIB)],
)
def test_work_in_flight_defaults_follow_the_memory_limit(
    tmp_path: Path, limit: str, workers: int, per_worker: int | None
) -> None:
    (tmp_path / "memory.max").write_text(limit)
    got = serving_options.default_inflight_bytes(workers, tmp_path)
    if per_worker is None:
        assert got == serving_options.default_inflight_bytes(1, tmp_path / "absent")
    else:
        assert got == per_worker


def test_work_beyond_the_in_flight_cap_gets_503_with_retry_after(
    models: Models, tmp_path: Path
) -> None:
    """One worker admits 1 MiB of bodies at a time: of eight concurrent 700 KiB requests some are
    refused at once with 503 and Retry-After, the others are answered correctly."""
    server = ServerProcess(
        models.path("slow-predict.joblib"),
        tmp_path,
        args=("--max-batch-size", "1"),
        env={"MAX_INFLIGHT_BYTES": str(MIB)},
    )
    rows = np.tile(IRIS_X, (250, 1))  # ~700 KiB of JSON
    body = json.dumps(v1_body(rows))
    with started(server):
        threads = []
        answers: list[http.client.HTTPResponse] = []
        bodies: list[bytes] = []

        def call() -> None:
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
            connection.request("POST", "/v1/models/iris:predict", body)
            response = connection.getresponse()
            bodies.append(response.read())
            answers.append(response)
            connection.close()

        for _ in range(8):
            threads.append(threading.Thread(target=call))
            threads[-1].start()
        for thread in threads:
            thread.join(60)
    statuses = sorted(answer.status for answer in answers)
    assert len(statuses) == 8
    assert 200 in statuses
    assert 503 in statuses
    assert set(statuses) == {200, 503}
    for answer, raw in zip(answers, bodies, strict=True):
        if answer.status == 503:
            assert answer.getheader("retry-after") == "1"
            assert "in flight" in json.loads(raw)["error"]
        else:
            assert json.loads(raw) == {"predictions": models.slow.predict(rows).tolist()}


def test_work_of_clients_that_left_is_dropped(models: Models, tmp_path: Path) -> None:
    """Predicting takes 0.25 s per call and batches one row: two-row requests run outside the
    loop one after another. Eight of ten clients leave right after sending; their work is never
    run (the predict-call count shows it)."""
    server = ServerProcess(
        models.path("slow-predict.joblib"), tmp_path, args=("--max-batch-size", "1")
    )
    body = json.dumps(v1_body(IRIS_X[:2])).encode()
    raw = b"POST /v1/models/iris:predict HTTP/1.1\r\ncontent-length: %d\r\n\r\n%s" % (
        len(body),
        body,
    )
    with started(server):
        calls_before, _, _ = batch_counts(server.port)
        first = _connect(server.port)
        first.sendall(raw)
        time.sleep(0.05)
        for _ in range(8):
            leaving = _connect(server.port)
            leaving.sendall(raw)
            leaving.close()
        last = _connect(server.port)
        last.sendall(raw)
        for sock in (first, last):
            answer = _read_answer(sock, timeout=5)
            assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
            sock.close()
        calls_after, _, _ = batch_counts(server.port)
    assert calls_after - calls_before <= 3


# -- 4. probes on their own listener ------------------------------------------------------------

_LOAD_SCRIPT = textwrap.dedent(
    """
    import http.client, sys, threading, time
    port, seconds, clients = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
    body = sys.stdin.buffer.read()
    done = []
    def client():
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        stop = time.monotonic() + seconds
        while time.monotonic() < stop:
            connection.request("POST", "/v1/models/iris:predict", body)
            response = connection.getresponse()
            response.read()
            done.append(response.status)
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(len(done), done.count(200))
    """
)


def _health_server(models: Models, tmp: Path, model: str, workers: int = 2) -> ServerProcess:
    return ServerProcess(models.path(model), tmp, workers=workers)


def test_probes_answer_within_100ms_p99_while_inference_is_saturated(
    models: Models, tmp_path: Path
) -> None:
    """Sixteen clients (in another process) send 20,000-row requests without pause; probes on the
    health port, after a second of warm-up, answer 400 times with a 99th percentile <= 100 ms."""
    server = _health_server(models, tmp_path, "iris.joblib")
    body = json.dumps(v1_body(np.tile(IRIS_X, (134, 1))[:20000])).encode()
    with started(server):
        load = subprocess.Popen(
            [sys.executable, "-c", _LOAD_SCRIPT, str(server.port), "12", "16"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert load.stdin is not None
        load.stdin.write(body)
        load.stdin.close()
        time.sleep(1.5)
        latencies = []
        for index in range(400):
            path = "/v2/health/live" if index % 2 else "/v2/health/ready"
            begun = time.perf_counter()
            answer = request(server.health_port, "GET", path, timeout=5)
            latencies.append(time.perf_counter() - begun)
            assert answer.status == 200
            time.sleep(0.01)
        assert load.poll() is None, "the load ended before the probes did"
        assert load.stdout is not None
        out = load.stdout.read()
        load.wait(60)
    sent, ok = (int(word) for word in out.split())
    assert ok == sent > 0
    p99 = sorted(latencies)[int(len(latencies) * 0.99) - 1]
    assert p99 <= 0.100, f"p99 {p99 * 1000:.1f} ms, median {np.median(latencies) * 1000:.1f} ms"


def test_ready_needs_one_loaded_worker_and_live_answers_while_loading(
    models: Models, tmp_path: Path
) -> None:
    """The model takes 2 s to load. While loading: live 200, ready 503 (the startup probe's
    path). Once loaded: ready 200; a killed worker reloads for 2 s while the other serves, and
    the pod stays ready on both ports."""
    server = _health_server(models, tmp_path, "slow-load.joblib").start()
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError):
                live = request(server.health_port, "GET", "/v2/health/live", timeout=2)
                ready = request(server.health_port, "GET", "/v2/health/ready", timeout=2)
                break
            assert time.monotonic() < deadline, server.log_text()
            time.sleep(0.02)
        assert live.status == 200
        assert ready.status == 503
        server.wait_ready()
        assert request(server.health_port, "GET", "/v2/health/ready").status == 200
        victim = psutil.Process(server.pid).children()[0]
        victim.kill()
        victim.wait(10)
        restarting_seen = False
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            assert request(server.health_port, "GET", "/v2/health/ready").status == 200
            assert request(server.port, "GET", "/v2/health/ready").status == 200
            restarting_seen = restarting_seen or len(psutil.Process(server.pid).children()) == 2
            time.sleep(0.05)
        assert restarting_seen
    finally:
        server.stop()


# -- 5. SIGTERM with keep-alive clients ----------------------------------------------------------


@pytest.mark.parametrize("run", range(5))
def test_sigterm_with_keep_alive_clients_fails_no_request(
    models: Models, tmp_path: Path, run: int
) -> None:
    """Sixteen clients send on keep-alive connections and stop only when the server answers
    `Connection: close`; SIGTERM arrives mid-load. Every request sent is answered, correctly."""
    server = ServerProcess(
        models.path("drain.joblib"),
        tmp_path,
        workers=2,
        args=("--drain-delay", "0.5", "--graceful-timeout", "10"),
    )
    server.start()
    server.wait_ready()
    body = json.dumps(v1_body(IRIS_X[:2]))
    expected = {"predictions": models.slow.predict(IRIS_X[:2]).tolist()}
    failures: list[str] = []
    answered: list[int] = []
    go = threading.Barrier(17)

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        count = 0
        go.wait()
        while True:
            try:
                connection.request("POST", "/v1/models/iris:predict", body)
                response = connection.getresponse()
                answer = response.read()
            except (OSError, http.client.HTTPException) as error:
                failures.append(f"after {count} answers: {error!r}")
                break
            if response.status != 200 or json.loads(answer) != expected:
                failures.append(f"{response.status}: {answer!r}")
                break
            count += 1
            if response.getheader("connection") == "close":
                break
        connection.close()
        answered.append(count)

    threads = [threading.Thread(target=client) for _ in range(16)]
    for thread in threads:
        thread.start()
    go.wait()
    time.sleep(0.7 + 0.1 * run)
    server.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    exit_code = server.wait_exit(timeout=30)
    for thread in threads:
        thread.join(10)
    assert failures == []
    assert exit_code == 0
    assert len(answered) == 16
    assert sum(answered) > 16


# -- 6. a bad request is refused before it joins a batch ----------------------------------------


def _nan_request() -> tuple[bytes, int]:
    row = np.array([[5.1, np.nan, 1.4, 0.2]])
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input-0",
                    "shape": [1, 4],
                    "datatype": "FP64",
                    "parameters": {"binary_data_size": 32},
                }
            ]
        }
    ).encode()
    return header + row.astype("<f8").tobytes(), len(header)


def test_a_trickle_of_bad_requests_does_not_stop_batching(
    servers: dict[str, ServerProcess], models: Models
) -> None:
    """Twelve clients send good single rows while one sends rows holding NaN (which the model
    refuses) as fast as it gets answers. The bad ones get 400; the good ones still share calls."""
    port = servers["batching"].port
    calls_before, rows_before, _ = batch_counts(port)
    bad_body, header_length = _nan_request()
    stop = threading.Event()
    bad_statuses: list[int] = []
    good: list[bool] = []

    def good_client(index: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        row = IRIS_X[index : index + 1]
        want = models.slow.predict(row).tolist()
        for _ in range(15):
            connection.request("POST", "/v2/models/iris/infer", json.dumps(v2_body(row)))
            output = json.loads(connection.getresponse().read())["outputs"][0]
            good.append(output["data"] == want)
        connection.close()

    def bad_client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while not stop.is_set():
            connection.request(
                "POST",
                "/v2/models/iris/infer",
                bad_body,
                {"Inference-Header-Content-Length": str(header_length)},
            )
            response = connection.getresponse()
            response.read()
            bad_statuses.append(response.status)
        connection.close()

    troublemaker = threading.Thread(target=bad_client)
    troublemaker.start()
    workers = [threading.Thread(target=good_client, args=(i,)) for i in range(12)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(60)
    stop.set()
    troublemaker.join(10)
    calls_after, rows_after, _ = batch_counts(port)
    assert all(good)
    assert len(good) == 12 * 15
    assert bad_statuses
    assert set(bad_statuses) == {400}
    calls = calls_after - calls_before
    rows = rows_after - rows_before
    # Without batching there would be one call per good request (180 calls).
    assert calls <= 12 * 15 / 3, f"{calls} predict calls for {rows} rows"


def test_requests_with_nan_get_400_naming_it(servers: dict[str, ServerProcess]) -> None:
    bad_body, header_length = _nan_request()
    response = request(
        servers["batching"].port,
        "POST",
        "/v2/models/iris/infer",
        bad_body,
        headers={"Inference-Header-Content-Length": str(header_length)},
    )
    assert response.status == 400
    assert "NaN" in response.json()["error"]
    ok = post_json(servers["batching"].port, "/v1/models/iris:predict", v1_body(IRIS_X[:1]))
    assert ok.status == 200
