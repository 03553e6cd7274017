"""The fetcher against hostile or careless servers (issue 10, points 9-11), all on loopback:
credentials stay with their host, https never falls back to http, no secret of a URI reaches a log
or the termination message, and endless or dripping answers end at the size limit or deadline."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelserver import config, uris
from modelserver.fetching import fetch

from .local_http import Handler, LocalServer, ThrowawayCA, pause, redirect, send, serve

MODEL = os.urandom(200_000)
BASIC = "Basic " + base64.b64encode(b"reader:s3cret").decode()
SECRETS = ("reader", "PaSSw0rd", "SIGSECRET", "CREDSECRET", "LOCATIONSECRET")


@pytest.fixture
def origin() -> Iterator[LocalServer]:
    server = LocalServer("127.0.0.1")
    yield server
    server.close()


@pytest.fixture
def elsewhere() -> Iterator[LocalServer]:
    """Another host: 127.0.0.2 is a different address (and name) than 127.0.0.1."""
    server = LocalServer("127.0.0.2")
    yield server
    server.close()


@pytest.fixture
def ca(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ThrowawayCA:
    """A test CA that the fetcher trusts (SSL_CERT_FILE, as in a pod with a custom bundle)."""
    authority = ThrowawayCA(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(authority.ca_file))
    return authority


@pytest.fixture
def secure(ca: ThrowawayCA) -> Iterator[LocalServer]:
    server = LocalServer("127.0.0.1", tls=ca.server_context)
    yield server
    server.close()


def _fetch(uri: str, dest: Path, termination_log: Path, *extra: str) -> int:
    argv = ["--model-uri", uri, "--dest", str(dest), "--termination-log", str(termination_log)]
    settings = config.parse_fetch([*argv, *extra], {"FETCH_BACKOFF_SECONDS": "0.01"})
    return fetch.run(settings)


def _fetch_cli(
    uri: str, dest: Path, termination_log: Path, *extra: str, timeout: float = 30
) -> tuple[int, str, float]:
    """`python -m modelserver fetch` as the init container runs it: exit code, stderr, seconds."""
    argv = ["--model-uri", uri, "--dest", str(dest), "--termination-log", str(termination_log)]
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "modelserver", "fetch", *argv, *extra],
        env={**os.environ, "FETCH_BACKOFF_SECONDS": "0.01"},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return done.returncode, done.stderr, time.monotonic() - started


def _with_credentials(url: str, user: str = "reader", password: str = "s3cret") -> str:  # noqa: S107
    scheme, rest = url.split("://")
    return f"{scheme}://{user}:{password}@{rest}"


def _leftovers(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.name.startswith("."))


# -- point 9: redirects -----------------------------------------------------------------------


def test_credentials_are_not_forwarded_to_another_host(
    origin: LocalServer, elsewhere: LocalServer, tmp_path: Path, termination_log: Path
) -> None:
    origin.routes["/model"] = redirect(elsewhere.url("/blob"))
    elsewhere.routes["/blob"] = serve(MODEL)
    dest = tmp_path / "model"
    assert _fetch(_with_credentials(origin.url("/model")), dest, termination_log) == 0
    assert dest.read_bytes() == MODEL
    assert origin.requests == [("/model", BASIC)]
    assert elsewhere.requests == [("/blob", None)]


def test_credentials_are_not_forwarded_to_another_port_of_the_same_host(
    origin: LocalServer, tmp_path: Path, termination_log: Path
) -> None:
    other_port = LocalServer("127.0.0.1")
    try:
        origin.routes["/model"] = redirect(other_port.url("/blob"))
        other_port.routes["/blob"] = serve(MODEL)
        assert _fetch(_with_credentials(origin.url("/model")), tmp_path / "m", termination_log) == 0
        assert other_port.requests == [("/blob", None)]
    finally:
        other_port.close()


def test_credentials_follow_a_redirect_within_their_origin(
    origin: LocalServer, tmp_path: Path, termination_log: Path
) -> None:
    origin.routes["/old"] = redirect("/model", 301)
    origin.routes["/model"] = serve(MODEL, authorization=BASIC)
    dest = tmp_path / "model"
    assert _fetch(_with_credentials(origin.url("/old")), dest, termination_log) == 0
    assert dest.read_bytes() == MODEL
    assert origin.requests == [("/old", BASIC), ("/model", BASIC)]


def test_credentials_in_a_location_header_are_not_used(
    origin: LocalServer, elsewhere: LocalServer, tmp_path: Path, termination_log: Path
) -> None:
    origin.routes["/model"] = redirect(_with_credentials(elsewhere.url("/blob"), "eve", "x"))
    elsewhere.routes["/blob"] = serve(MODEL)
    assert _fetch(origin.url("/model"), tmp_path / "m", termination_log) == 0
    assert elsewhere.requests == [("/blob", None)]


def test_downloads_over_https_with_a_trusted_ca(
    secure: LocalServer, tmp_path: Path, termination_log: Path
) -> None:
    secure.routes["/model"] = serve(MODEL)
    dest = tmp_path / "model"
    assert _fetch(secure.url("/model"), dest, termination_log) == 0
    assert dest.read_bytes() == MODEL


def test_refuses_a_redirect_from_https_to_http(
    secure: LocalServer, origin: LocalServer, tmp_path: Path, termination_log: Path
) -> None:
    secure.routes["/model"] = redirect(origin.url("/model"))
    origin.routes["/model"] = serve(MODEL)
    dest = tmp_path / "model"
    assert _fetch(_with_credentials(secure.url("/model")), dest, termination_log) == 1
    reason = termination_log.read_text()
    assert "refusing a redirect from https to http" in reason
    assert "s3cret" not in reason
    assert origin.requests == []
    assert secure.hits("/model") == 1, "a refused redirect will not change: no retry"
    assert not dest.exists()


def test_refuses_a_redirect_to_another_scheme(
    origin: LocalServer, tmp_path: Path, termination_log: Path
) -> None:
    origin.routes["/model"] = redirect("ftp://127.0.0.1/model")
    assert _fetch(origin.url("/model"), tmp_path / "m", termination_log) == 1
    assert "ftp://127.0.0.1/model" in termination_log.read_text()
    assert origin.hits("/model") == 1


# -- point 10: redaction ----------------------------------------------------------------------

PRESIGNED = (
    "?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=CREDSECRET&X-Amz-Signature=SIGSECRET"
)


def test_no_secret_of_the_uri_reaches_the_logs_on_success(
    origin: LocalServer, elsewhere: LocalServer, tmp_path: Path, termination_log: Path
) -> None:
    """Retries (warning lines with the error), a cross-host redirect to a pre-signed URL, and
    the success line: all JSON log lines on stderr, none with a secret."""
    answers = iter([503, 503])

    def flaky(handler: Handler) -> None:
        status = next(answers, 302)
        if status == 302:
            location = elsewhere.url("/blob?X-Amz-Signature=LOCATIONSECRET")
            send(handler, 302, b"", Location=location)
        else:
            send(handler, status, b"busy")

    origin.routes["/model"] = flaky
    elsewhere.routes["/blob"] = serve(MODEL)
    uri = _with_credentials(origin.url("/model"), password="PaSSw0rd") + PRESIGNED
    code, stderr, _ = _fetch_cli(uri, tmp_path / "model", termination_log)
    assert code == 0, stderr
    lines = [json.loads(line) for line in stderr.splitlines()]
    assert [line["message"] for line in lines if line["level"] == "WARNING"] == [
        "fetch failed, retrying"
    ] * 2
    fetched = next(line for line in lines if line["message"] == "model fetched")
    assert fetched["uri"] == (
        f"http://***@127.0.0.1:{origin.port}/model"
        "?X-Amz-Algorithm=***&X-Amz-Credential=***&X-Amz-Signature=***"
    )
    for secret in SECRETS:
        assert secret not in stderr


def test_no_secret_of_the_uri_reaches_the_termination_message_or_logs_on_failure(
    origin: LocalServer, tmp_path: Path, termination_log: Path
) -> None:
    origin.routes["/model"] = lambda handler: send(handler, 403, b"expired")
    uri = _with_credentials(origin.url("/model"), password="PaSSw0rd") + PRESIGNED
    code, stderr, _ = _fetch_cli(uri, tmp_path / "model", termination_log)
    assert code == 1
    reason = termination_log.read_text()
    assert reason.startswith("model fetch failed: HTTP 403")
    assert f"127.0.0.1:{origin.port}/model?X-Amz-Algorithm=***" in reason
    error = json.loads(stderr.splitlines()[-1])
    assert error["level"] == "ERROR"
    assert error["uri"].startswith("http://***@127.0.0.1:")
    for secret in SECRETS:
        assert secret not in reason
        assert secret not in stderr


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        (
            "https://alice:pw@bucket.s3.amazonaws.com/m.joblib?X-Amz-Signature=abc&X-Amz-Expires=60",
            "https://***@bucket.s3.amazonaws.com/m.joblib?X-Amz-Signature=***&X-Amz-Expires=***",
        ),
        ("https://h/m?sig=a%2Fb&token", "https://h/m?sig=***&***"),
        ("https://h/m?we%20ird=1#part", "https://h/m?***"),
        ("http://only-user@h:8080/m", "http://***@h:8080/m"),
        ("s3://models/iris/model.joblib", "s3://models/iris/model.joblib"),
        ("file:///opt/models/m.skops", "file:///opt/models/m.skops"),
        ("http://[::1/m?secret=1", "<unparsable URI>"),
    ],
)
def test_redaction_rules(uri: str, shown: str) -> None:
    assert uris.redact(uri) == shown
    assert uris.redact_text(f"cannot reach {uri}: refused.") == f"cannot reach {shown}: refused."


# -- point 11: size limit and deadline --------------------------------------------------------


def _endless(server: LocalServer, total: int = 64 * 1024 * 1024) -> None:
    """200 without a length, then zeros until `total` bytes or the client hangs up."""

    def route(handler: Handler) -> None:
        handler.send_response(200)
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.close_connection = True
        block = bytes(64 * 1024)
        for _ in range(total // len(block)):
            if server.stop.is_set():
                return
            handler.wfile.write(block)

    server.routes["/model"] = route


def test_an_endless_answer_stops_at_the_size_limit(
    origin: LocalServer, tmp_path: Path, termination_log: Path
) -> None:
    _endless(origin)
    dest = tmp_path / "model"
    started = time.monotonic()
    assert _fetch(origin.url("/model"), dest, termination_log, "--max-model-bytes", "1000000") == 1
    assert time.monotonic() - started < 10
    reason = termination_log.read_text()
    assert "passed the limit of 1000000 bytes (--max-model-bytes, MAX_MODEL_BYTES)" in reason
    assert origin.hits("/model") == 1, "a model that is too large will not shrink: no retry"
    assert not dest.exists()
    assert _leftovers(tmp_path) == []


def test_an_announced_length_above_the_default_limit_is_refused_before_downloading(
    origin: LocalServer, tmp_path: Path, termination_log: Path
) -> None:
    def huge(handler: Handler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(5 * 1024**3))
        handler.end_headers()
        handler.wfile.write(bytes(1024))
        handler.close_connection = True

    origin.routes["/model"] = huge
    assert _fetch(origin.url("/model"), tmp_path / "m", termination_log) == 1
    assert "the model is 5368709120 bytes, above the limit of 4294967296 bytes" in (
        termination_log.read_text()
    )
    assert origin.hits("/model") == 1


@pytest.mark.parametrize(("limit", "code"), [(len(MODEL), 0), (len(MODEL) - 1, 1)])
def test_a_model_of_exactly_the_limit_is_accepted(
    origin: LocalServer, tmp_path: Path, termination_log: Path, limit: int, code: int
) -> None:
    origin.routes["/model"] = serve(MODEL)
    dest = tmp_path / "model"
    assert _fetch(origin.url("/model"), dest, termination_log, "--max-model-bytes", str(limit)) == (
        code
    )
    assert dest.exists() == (code == 0)


def _drip(server: LocalServer, *, headers: bool) -> None:
    """A byte every 0.1 s for up to 60 s: of the body (announcing 1 MB), or of the headers."""

    def route(handler: Handler) -> None:
        handler.close_connection = True
        if headers:
            handler.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        else:
            handler.send_response(200)
            handler.send_header("Content-Length", "1000000")
            handler.end_headers()
        for _ in range(600):
            handler.wfile.write(b"a")
            handler.wfile.flush()
            if not pause(server, 0.1):
                return

    server.routes["/model"] = route


@pytest.mark.parametrize("headers", [False, True], ids=["dripping-body", "dripping-headers"])
def test_a_dripping_server_fails_the_download_at_the_deadline(
    origin: LocalServer, tmp_path: Path, termination_log: Path, headers: bool
) -> None:
    """The per-read timeout (30 s) never fires on a byte every 0.1 s; the 2 s deadline does."""
    _drip(origin, headers=headers)
    dest = tmp_path / "model"
    code, stderr, seconds = _fetch_cli(
        origin.url("/model"), dest, termination_log, "--deadline", "2", "--timeout", "30"
    )
    assert code == 1, stderr
    assert 2 <= seconds < 2 + 3, seconds
    reason = termination_log.read_text()
    assert "did not finish within the fetch deadline of 2 s" in reason
    assert origin.hits("/model") == 1
    assert not dest.exists()
    assert _leftovers(tmp_path) == []


def test_the_deadline_covers_retries_and_their_backoff(
    origin: LocalServer, tmp_path: Path, termination_log: Path
) -> None:
    origin.routes["/model"] = lambda handler: send(handler, 503, b"busy")
    started = time.monotonic()
    code = _fetch(
        origin.url("/model"),
        tmp_path / "m",
        termination_log,
        *("--max-attempts", "100", "--backoff", "0.2", "--deadline", "2"),
    )
    assert code == 1
    assert time.monotonic() - started < 3
    reason = termination_log.read_text()
    # The deadline ends the backoff ("leaves no time for another") or, when a try starts just
    # before it, that try; either way the last server error is named.
    assert "fetch deadline of 2 s" in reason
    assert "HTTP 503" in reason
    assert 2 <= origin.hits("/model") < 10


def test_the_size_and_deadline_flags_have_environment_variables() -> None:
    argv = ["--model-uri", "http://h/m", "--dest", "model"]
    defaults = config.parse_fetch(argv, {})
    assert (defaults.max_model_bytes, defaults.deadline_seconds) == (4 * 1024**3, 900.0)
    from_env = config.parse_fetch(argv, {"MAX_MODEL_BYTES": "1000", "FETCH_DEADLINE_SECONDS": "5"})
    assert (from_env.max_model_bytes, from_env.deadline_seconds) == (1000, 5.0)
    with pytest.raises(config.ConfigError, match="FETCH_DEADLINE_SECONDS"):
        config.parse_fetch(argv, {"FETCH_DEADLINE_SECONDS": "0"})
    with pytest.raises(config.ConfigError, match="MAX_MODEL_BYTES"):
        config.parse_fetch(argv, {"MAX_MODEL_BYTES": "-1"})
