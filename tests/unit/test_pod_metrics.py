"""The pods' /metrics are read once per pass, over real HTTP, whoever asks (the canary analysis
and the drift check judge the same reading); a pod that does not answer counts as silent."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from modeldeploy import canary, pods, render, scrape

TEXT = b"""\
modelserver_requests_total{model="m",protocol="v1",status="200"} 7.0
modelserver_requests_total{model="m",protocol="v1",status="503"} 1.0
modelserver_feature_psi{feature="x0",model="m",version="1"} 0.4
"""


@pytest.fixture
def pod() -> Iterator[tuple[str, list[str]]]:
    """A pod's metrics endpoint: its URL and the paths asked for so far."""
    asked: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", str(len(TEXT)))
            self.end_headers()
            self.wfile.write(TEXT)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/metrics", asked
    server.shutdown()
    server.server_close()


class _Pods(pods.PodMetrics):
    """Two pods at fixed URLs instead of listed from an API server."""

    def __init__(self, urls: list[tuple[str, str]], io: ThreadPoolExecutor) -> None:
        super().__init__(None, render.Owner("m", "ns", "uid"), io)  # type: ignore[arg-type]
        self.urls, self.listed = urls, 0

    def targets(self) -> list[tuple[str, str]]:
        self.listed += 1
        return self.urls


def test_one_reading_serves_the_canary_analysis_and_the_drift_check(
    pod: tuple[str, list[str]],
) -> None:
    url, asked = pod
    with ThreadPoolExecutor(2) as io:
        # A pod on a port where nothing listens: silent, not an error.
        pod_metrics = _Pods(
            [(canary.CANARY, url), (canary.STABLE, "http://127.0.0.1:9/metrics")], io
        )
        readings = pod_metrics.readings()
        figures = pod_metrics.drift_figures()
    assert readings == {
        canary.STABLE: {},
        canary.CANARY: {scrape.REQUESTS: 8.0, scrape.ERRORS: 1.0},
    }
    assert figures == [{"feature x0": 0.4}]
    assert asked == ["/metrics"]  # read once for both
    assert pod_metrics.listed == 1  # and the pods listed once
