"""Payload logging: CloudEvents at a real local HTTP sink, redaction before anything leaves, and a
bounded queue under a dead and a slow sink that drops and counts instead of holding predictions."""

from __future__ import annotations

import collections
import http.server
import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import pytest

from .support import IRIS_X, Models, ServerProcess, free_port, post_json, v1_body, v2_body
from .test_server_monitoring import samples


class Sink:
    """An HTTP server that records every POST's headers and JSON body, optionally slowly.

    By default it answers 202 with a length on a kept-alive connection (HTTP/1.1). With
    `close_delimited` it speaks HTTP/1.0 and answers without a length, the answer ending when it
    closes the connection (as Python's http.server and many small collectors do); `status` is
    the status it answers; with `hang_up` it records the event and closes without answering;
    `idle_timeout` closes a kept-alive connection idle that long.
    """

    def __init__(
        self,
        delay: float = 0.0,
        *,
        close_delimited: bool = False,
        status: int = 202,
        hang_up: bool = False,
        idle_timeout: float | None = None,
    ) -> None:
        self.events: list[tuple[dict[str, str], Any]] = []
        self.peers: list[tuple[str, int]] = []  # each event's client address (its connection)
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0" if close_delimited else "HTTP/1.1"
            timeout = idle_timeout

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                time.sleep(delay)
                owner.events.append(
                    ({k.lower(): v for k, v in self.headers.items()}, json.loads(body))
                )
                owner.peers.append(self.client_address)
                if hang_up:
                    self.close_connection = True
                    return
                self.send_response(status)
                if not close_delimited:
                    self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/events"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def sinks() -> Iterator[Callable[..., Sink]]:
    """Sinks made with `Sink`'s arguments, closed after the test."""
    made: list[Sink] = []

    def make(**kwargs: Any) -> Sink:
        made.append(Sink(**kwargs))
        return made[-1]

    yield make
    for server in made:
        server.close()


@pytest.fixture
def sink(sinks: Callable[..., Sink]) -> Sink:
    return sinks()


@pytest.fixture
def serve(models: Models, tmp_path: Path) -> Iterator[Any]:
    started: list[ServerProcess] = []

    def start(*args: str) -> ServerProcess:
        server = ServerProcess(models.path("iris.joblib"), tmp_path, args=args).start()
        started.append(server)
        return server.wait_ready()

    yield start
    for server in started:
        server.stop()


def events_total(server: ServerProcess) -> dict[str, float]:
    found = samples(server.port, "modelserver_payload_log_events_total")
    return {dict(labels)["outcome"]: value for labels, value in found.items()}


def wait_for(condition: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_requests_and_responses_arrive_as_cloudevents_with_redacted_features(
    serve: Any, sink: Sink, models: Models
) -> None:
    server = serve(
        "--payload-log-url", sink.url, "--payload-log-redact", "0,2", "--model-version", "v7"
    )
    rows = IRIS_X[:3]
    assert post_json(server.port, "/v1/models/iris:predict", v1_body(rows)).status == 200
    assert post_json(server.port, "/v2/models/iris/infer", v2_body(rows[:1])).status == 200

    wait_for(lambda: len(sink.events) == 4)

    by_id: dict[str, dict[str, Any]] = {}
    for headers, body in sink.events:
        assert headers["ce-specversion"] == "1.0"
        assert headers["ce-modelname"] == "iris"
        assert headers["ce-modelversion"] == "v7"
        assert headers["content-type"] == "application/json"
        assert headers["ce-source"] == "/modelserver/iris"
        by_id.setdefault(headers["ce-id"], {})[headers["ce-type"]] = body
    assert len(by_id) == 2  # one id per request, shared by its response
    pairs = sorted(
        by_id.values(), key=lambda pair: -len(pair["io.modeldeploy.inference.request"]["instances"])
    )
    for pair, sent in zip(pairs, (rows, rows[:1]), strict=True):
        request_body = pair["io.modeldeploy.inference.request"]
        expected = [[None, row[1], None, row[3]] for row in sent.tolist()]
        assert request_body["instances"] == expected  # features 0 and 2 never left the pod
        assert pair["io.modeldeploy.inference.response"] == {
            "predictions": models.iris.predict(sent).tolist()
        }
    assert events_total(server) == {"sent": 4.0}


def log_one_row_requests(server: ServerProcess, rows: int, first: int = 0) -> None:
    """`rows` requests of one row each (rows `first`, `first` + 1, ...), then waits until every
    event so far is counted."""
    counted = sum(events_total(server).values())
    for row in range(first, first + rows):
        response = post_json(server.port, "/v1/models/iris:predict", v1_body(IRIS_X[row : row + 1]))
        assert response.status == 200
    wait_for(lambda: sum(events_total(server).values()) >= counted + 2 * rows)


def posts_per_event(sink: Sink) -> collections.Counter[tuple[str, str]]:
    """How many times the sink received each event (by id and type)."""
    return collections.Counter((headers["ce-id"], headers["ce-type"]) for headers, _ in sink.events)


@pytest.mark.parametrize("close_delimited", [True, False], ids=["close-delimited", "keep-alive"])
def test_every_request_and_response_arrive_once_and_are_counted_sent(
    serve: Any, sinks: Callable[..., Sink], models: Models, close_delimited: bool
) -> None:
    sink = sinks(close_delimited=close_delimited)
    server = serve("--payload-log-url", sink.url)
    log_one_row_requests(server, 40)

    assert set(posts_per_event(sink).values()) == {1}
    assert len(sink.events) == 80
    by_id: dict[str, dict[str, Any]] = {}
    for headers, body in sink.events:
        by_id.setdefault(headers["ce-id"], {})[headers["ce-type"]] = body
    received = []
    for pair in by_id.values():
        rows = pair["io.modeldeploy.inference.request"]["instances"]
        assert pair["io.modeldeploy.inference.response"] == {
            "predictions": models.iris.predict(rows).tolist()
        }
        received += rows
    assert sorted(received) == sorted(IRIS_X[:40].tolist())
    assert events_total(server) == {"sent": 80.0}
    # One connection for all events when the sink keeps it alive, one per event when it closes.
    assert len(set(sink.peers)) == (80 if close_delimited else 1)


def test_a_kept_alive_connection_the_sink_closed_while_idle_is_not_reused(
    serve: Any, sinks: Callable[..., Sink]
) -> None:
    sink = sinks(idle_timeout=0.1)
    server = serve("--payload-log-url", sink.url)
    for row in range(5):
        log_one_row_requests(server, 1, first=row)  # each waits 0.6 s or more for /metrics

    assert events_total(server) == {"sent": 10.0}
    assert set(posts_per_event(sink).values()) == {1}
    assert len(sink.events) == 10
    assert len(set(sink.peers)) == 5  # a pair's two events share a connection


def test_a_sink_answering_503_gets_bounded_retries_and_each_event_counted_failed_once(
    serve: Any, sinks: Callable[..., Sink]
) -> None:
    sink = sinks(status=503)
    server = serve("--payload-log-url", sink.url)
    log_one_row_requests(server, 10)

    assert events_total(server) == {"failed": 20.0}
    # 503 says the sink did not take the event: it is tried 3 times (PayloadLogger's attempts),
    # then the rest of its batch is counted failed without being sent.
    posts = posts_per_event(sink)
    assert set(posts.values()) == {3}
    assert {kind for _, kind in posts} == {"io.modeldeploy.inference.request"}


def test_a_sink_that_takes_events_without_answering_never_gets_one_twice(
    serve: Any, sinks: Callable[..., Sink]
) -> None:
    sink = sinks(hang_up=True)  # it may have kept what it read: sending it again would duplicate
    server = serve("--payload-log-url", sink.url)
    log_one_row_requests(server, 10)

    assert events_total(server) == {"failed": 20.0}  # a failed event ends its batch
    assert set(posts_per_event(sink).values()) == {1}


def test_sampling_logs_about_the_configured_share(serve: Any, sink: Sink) -> None:
    server = serve("--payload-log-url", sink.url, "--payload-log-sample-rate", "0.3")
    for _ in range(300):
        post_json(server.port, "/v1/models/iris:predict", v1_body(IRIS_X[:1]))
    time.sleep(1)
    pairs = len(sink.events) / 2
    assert 50 <= pairs <= 130  # 90 expected; binomial sd about 8
    assert events_total(server)["sent"] == len(sink.events)


def send_many(server: ServerProcess, requests: int) -> None:
    with ThreadPoolExecutor(8) as pool:
        statuses = list(
            pool.map(
                lambda i: (
                    post_json(
                        server.port,
                        "/v1/models/iris:predict",
                        v1_body(IRIS_X[i % 150 : i % 150 + 2]),
                    ).status
                ),
                range(requests),
            )
        )
    assert statuses == [200] * requests


def test_a_dead_sink_drops_and_counts_with_memory_flat(serve: Any) -> None:
    dead = f"http://127.0.0.1:{free_port()}/events"
    server = serve("--payload-log-url", dead, "--payload-log-max-queue", "100")
    worker = psutil.Process(server.pid).children()[0]
    send_many(server, 500)
    before = worker.memory_info().rss
    send_many(server, 3000)
    after = worker.memory_info().rss

    counts = events_total(server)
    assert counts.get("sent", 0) == 0
    assert counts["dropped"] > 0
    assert counts["failed"] > 0
    # Every event is accounted for: dropped, failed, or still queued (at most 100).
    assert 2 * 3500 - 100 <= counts["dropped"] + counts["failed"] <= 2 * 3500
    assert after - before < 8 * 1024 * 1024, (before, after)


def test_a_slow_sink_gets_what_it_can_and_the_rest_is_dropped(
    serve: Any, sinks: Callable[..., Sink]
) -> None:
    slow = sinks(delay=0.05)
    server = serve("--payload-log-url", slow.url, "--payload-log-max-queue", "20")
    send_many(server, 400)
    counts = events_total(server)
    assert counts["dropped"] > 0
    wait_for(lambda: events_total(server).get("sent", 0) >= 20)
    sent = events_total(server)["sent"]
    assert len(slow.events) >= sent  # the sink records an event before it answers
    assert counts["dropped"] + sent <= 800


def test_redacting_a_feature_name_the_model_lacks_stops_the_server(
    models: Models, tmp_path: Path
) -> None:
    server = ServerProcess(
        models.path("iris.joblib"),
        tmp_path,
        args=("--payload-log-url", "http://127.0.0.1:9/", "--payload-log-redact", "ssn"),
    ).start()
    assert server.wait_exit() != 0
    assert "--payload-log-redact names feature 'ssn'" in server.termination_log.read_text()
