"""Access without Kubernetes: the pod's rate limit and HTTPS with certificate reload.

(Token checks need an API server: tests/integration/test_server_auth.py.)
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from modelserver import cli

from .support import IRIS_X, Models, ServerProcess, post_json, request, v1_body
from .tlscerts import Authority, SecretVolume

PREDICT = "/v1/models/iris:predict"
BODY = json.dumps(v1_body(IRIS_X[:1]))


def _wait_ready(server: ServerProcess, timeout: float = 60.0) -> ServerProcess:
    """Until the probes' own (plain HTTP) listener says ready: the main port may speak TLS."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.process is not None
        assert server.process.poll() is None, server.log_text()
        try:
            if request(server.health_port, "GET", "/v2/health/ready", timeout=2).status == 200:
                return server
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(server.log_text())


def _metric(port: int, pattern: str) -> float:
    time.sleep(0.6)  # workers publish their counts every half second
    text = request(port, "GET", "/metrics").body.decode()
    match = re.search(pattern, text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


@pytest.fixture(scope="module")
def limited(models: Models, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(
        models.path("iris.joblib"),
        tmp_path_factory.mktemp("limited"),
        workers=2,
        args=("--rate-limit-rps", "4", "--rate-limit-burst", "6"),
    ).start()
    try:
        yield _wait_ready(server)
    finally:
        server.stop()


def test_rate_limit_is_shared_by_the_workers_and_answers_429(limited: ServerProcess) -> None:
    # New connections: the kernel spreads them over both workers, which share one bucket.
    started = time.monotonic()
    statuses = [post_json(limited.port, PREDICT, v1_body(IRIS_X[:1])) for _ in range(40)]
    elapsed = time.monotonic() - started
    allowed = [r for r in statuses if r.status == 200]
    refused = [r for r in statuses if r.status == 429]
    assert len(allowed) + len(refused) == 40
    # The burst, plus what the rate refilled meanwhile; a bucket per worker would allow twice.
    assert 6 <= len(allowed) <= 6 + 4 * elapsed + 1
    answer = refused[0]
    assert answer.headers["content-type"] == "application/json"
    assert int(answer.headers["retry-after"]) >= 1
    assert "rate limit of 4 requests per second" in answer.json()["error"]
    pattern = r'^modelserver_requests_total\{model="iris",protocol="v1",status="429"\} (\S+)$'
    counted = _metric(limited.port, pattern)
    assert counted >= len(refused)


def test_rate_limit_refills_and_leaves_health_and_metrics_alone(limited: ServerProcess) -> None:
    while post_json(limited.port, PREDICT, v1_body(IRIS_X[:1])).status == 200:
        pass  # empty the bucket
    for path in ("/v2/health/ready", "/v2/health/live", "/metrics", "/v2/models/iris/ready"):
        assert request(limited.port, "GET", path).status == 200, path
    time.sleep(0.6)  # over two tokens' worth at 4 per second
    assert post_json(limited.port, PREDICT, v1_body(IRIS_X[:1])).status == 200


def test_preflight_refuses_half_a_tls_pair_and_unreadable_files(tmp_path: Path) -> None:
    log = tmp_path / "termination-log"
    log.touch()
    base = ["--model-uri", "file:///nowhere.joblib"]
    env = {"TERMINATION_LOG": str(log)}
    assert cli.main([*base, "--tls-cert-file", "/etc/hostname"], env) == 2
    assert "both --tls-cert-file and --tls-key-file" in log.read_text()
    missing = str(tmp_path / "absent.pem")
    assert cli.main([*base, "--tls-cert-file", missing, "--tls-key-file", missing], env) == 2
    assert "cannot use the TLS certificate" in log.read_text()
    assert cli.main([*base, "--auth", "kubernetes"], env) == 2
    assert "KUBECONFIG" in log.read_text()
    assert cli.main([*base, "--auth", "ldap"], env) == 2
    assert "none, kubernetes" in log.read_text()


# -- TLS ------------------------------------------------------------------------------------------


class _TlsClient:
    """Requests over HTTPS that verify the server against the test CA."""

    def __init__(self, port: int, ca_file: Path) -> None:
        self.port = port
        self.context = ssl.create_default_context(cafile=str(ca_file))

    def connect(self) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection("127.0.0.1", self.port, context=self.context, timeout=10)

    def predict(self, connection: http.client.HTTPSConnection | None = None) -> int:
        own = connection is None
        connection = connection or self.connect()
        try:
            connection.request("POST", PREDICT, body=BODY)
            response = connection.getresponse()
            response.read()
            return response.status
        finally:
            if own:
                connection.close()

    def served_serial(self) -> int:
        connection = self.connect()
        try:
            connection.connect()
            der = connection.sock.getpeercert(binary_form=True)  # type: ignore[union-attr]
            assert der is not None
            return int(x509.load_der_x509_certificate(der).serial_number)
        finally:
            connection.close()


@contextlib.contextmanager
def _tls_server(
    models: Models, tmp_path: Path, *, workers: int
) -> Iterator[tuple[Authority, SecretVolume, ServerProcess, _TlsClient]]:
    """A server whose certificate comes from a Secret-like folder, ready, and its client."""
    authority = Authority(tmp_path)
    volume = SecretVolume(tmp_path / "secret")
    volume.write(*authority.issue()[:2])
    server = ServerProcess(
        models.path("iris.joblib"),
        tmp_path,
        workers=workers,
        args=("--tls-cert-file", str(volume.cert_file), "--tls-key-file", str(volume.key_file)),
    ).start()
    try:
        _wait_ready(server)
        yield authority, volume, server, _TlsClient(server.port, authority.ca_file)
    finally:
        server.stop()


def test_https_is_verified_against_the_ca_and_plain_http_is_refused(
    models: Models, tmp_path: Path
) -> None:
    with _tls_server(models, tmp_path, workers=1) as (authority, _, server, client):
        _, _, serial = authority.issued[-1]
        assert client.predict() == 200
        assert client.served_serial() == serial
        with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
            request(server.port, "GET", "/v2/health/ready", timeout=3)
        stranger = ssl.create_default_context()  # the system CAs do not know the test CA
        with pytest.raises(ssl.SSLCertVerificationError):
            http.client.HTTPSConnection(
                "127.0.0.1", server.port, context=stranger, timeout=5
            ).connect()


def test_rotated_certificate_is_served_without_failing_a_request(
    models: Models, tmp_path: Path
) -> None:
    with _tls_server(models, tmp_path, workers=2) as (authority, volume, server, client):
        _, key, old_serial = authority.issued[-1]
        stop = threading.Event()
        outcomes: list[int | str] = []

        def load(keep_alive: bool) -> None:
            connection = client.connect() if keep_alive else None
            while not stop.is_set():
                try:
                    outcomes.append(client.predict(connection))
                except Exception as error:  # every failure counts, whatever its kind
                    outcomes.append(repr(error))

        threads = [threading.Thread(target=load, args=(i % 2 == 0,)) for i in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(1)
        # A half-written update (new certificate, old key) is not taken: the old pair serves on.
        new_cert, new_key, new_serial = authority.issue()
        volume.write(new_cert, key)
        time.sleep(6)
        assert client.served_serial() == old_serial
        volume.write(new_cert, new_key)
        rotated = time.monotonic()
        while client.served_serial() != new_serial:
            assert time.monotonic() - rotated < 60, "the new certificate was not served in 60 s"
            time.sleep(0.2)
        took = time.monotonic() - rotated
        time.sleep(1)
        stop.set()
        for thread in threads:
            thread.join(15)
        failures = [outcome for outcome in outcomes if outcome != 200]
        assert len(outcomes) > 100
        assert failures == []
        assert took < 60
        assert "keeping the current certificate" in server.log_text()
