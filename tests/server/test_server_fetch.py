"""`python -m modelserver fetch`: downloads over HTTP and S3 (a real local moto server), atomically,
with retries on transient errors only, and the digest checked before the file appears."""

from __future__ import annotations

import base64
import hashlib
import http.server
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from modelserver import config
from modelserver.fetching import fetch

from .support import free_port, s3_server

MODEL_BYTES = os.urandom(300_000)
MODEL_DIGEST = "sha256:" + hashlib.sha256(MODEL_BYTES).hexdigest()
ZEROS = "sha256:" + "0" * 64


class FileServer:
    """A local HTTP server whose paths answer a scripted sequence of (status, body) replies."""

    def __init__(self) -> None:
        self.routes: dict[str, list[tuple[int, bytes]]] = {}
        self.hits: dict[str, int] = {}
        self.authorization: str | None = None  # required Authorization header, when set
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if owner.authorization and self.headers["Authorization"] != owner.authorization:
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                replies = owner.routes.get(self.path, [(404, b"not here")])
                count = owner.hits.get(self.path, 0)
                owner.hits[self.path] = count + 1
                status, body = replies[min(count, len(replies) - 1)]
                self.send_response(status)
                if status == 299:  # scripted: promise the whole model, send half, hang up
                    self.send_header("Content-Length", str(len(MODEL_BYTES)))
                    self.end_headers()
                    self.wfile.write(MODEL_BYTES[: len(MODEL_BYTES) // 2])
                    self.close_connection = True
                    return
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def files() -> Iterator[FileServer]:
    server = FileServer()
    yield server
    server.close()


def _config(
    uri: str, dest: Path, termination_log: Path, *extra: str, **env: str
) -> config.FetchConfig:
    argv = ["--model-uri", uri, "--dest", str(dest), "--termination-log", str(termination_log)]
    return config.parse_fetch([*argv, *extra], {"FETCH_BACKOFF_SECONDS": "0.01", **env})


def _leftovers(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.name.startswith("."))


def test_downloads_over_http_and_checks_the_digest(
    files: FileServer, tmp_path: Path, termination_log: Path
) -> None:
    files.routes["/model.joblib"] = [(200, MODEL_BYTES)]
    dest = tmp_path / "models" / "model"
    settings = _config(
        files.url("/model.joblib"), dest, termination_log, "--model-digest", MODEL_DIGEST
    )
    assert fetch.run(settings) == 0
    assert dest.read_bytes() == MODEL_BYTES
    assert _leftovers(dest.parent) == []


def test_retries_transient_errors_with_backoff(
    files: FileServer, tmp_path: Path, termination_log: Path
) -> None:
    files.routes["/flaky"] = [(503, b"busy"), (500, b"oops"), (299, b""), (200, MODEL_BYTES)]
    dest = tmp_path / "model"
    assert fetch.run(_config(files.url("/flaky"), dest, termination_log)) == 0
    assert files.hits["/flaky"] == 4
    assert dest.read_bytes() == MODEL_BYTES
    assert _leftovers(tmp_path) == []


def test_gives_up_after_the_attempts_and_says_why(
    files: FileServer, tmp_path: Path, termination_log: Path
) -> None:
    files.routes["/down"] = [(502, b"bad gateway")]
    dest = tmp_path / "model"
    assert fetch.run(_config(files.url("/down"), dest, termination_log, "--max-attempts", "3")) == 1
    assert files.hits["/down"] == 3
    assert not dest.exists()
    reason = termination_log.read_text()
    assert reason.startswith("model fetch failed: HTTP 502")
    assert "gave up after 3 attempts" in reason


@pytest.mark.parametrize("status", [404, 403])
def test_does_not_retry_answers_that_will_not_change(
    files: FileServer, tmp_path: Path, termination_log: Path, status: int
) -> None:
    files.routes["/nope"] = [(status, b"no")]
    dest = tmp_path / "model"
    assert fetch.run(_config(files.url("/nope"), dest, termination_log)) == 1
    assert files.hits["/nope"] == 1
    assert f"HTTP {status}" in termination_log.read_text()
    assert not dest.exists()


def test_digest_mismatch_leaves_no_file(
    files: FileServer, tmp_path: Path, termination_log: Path
) -> None:
    files.routes["/model.joblib"] = [(200, MODEL_BYTES)]
    dest = tmp_path / "model"
    settings = _config(files.url("/model.joblib"), dest, termination_log, "--model-digest", ZEROS)
    assert fetch.run(settings) == 1
    assert files.hits["/model.joblib"] == 1
    assert not dest.exists()
    assert _leftovers(tmp_path) == []
    assert "digest mismatch" in termination_log.read_text()


def test_keeps_an_existing_file_with_the_pinned_digest(
    files: FileServer, tmp_path: Path, termination_log: Path
) -> None:
    dest = tmp_path / "model"
    dest.write_bytes(MODEL_BYTES)
    settings = _config(
        files.url("/model.joblib"), dest, termination_log, "--model-digest", MODEL_DIGEST
    )
    assert fetch.run(settings) == 0
    assert files.hits == {}


def test_credentials_in_the_url_are_sent_as_basic_auth_and_never_shown(
    files: FileServer, tmp_path: Path, termination_log: Path
) -> None:
    files.routes["/model.joblib"] = [(200, MODEL_BYTES)]
    files.authorization = "Basic " + base64.b64encode(b"reader:s3cret").decode()
    dest = tmp_path / "model"
    good = files.url("/model.joblib").replace("http://", "http://reader:s3cret@")
    assert fetch.run(_config(good, dest, termination_log)) == 0
    assert dest.read_bytes() == MODEL_BYTES
    wrong = files.url("/model.joblib").replace("http://", "http://reader:wrong@")
    assert fetch.run(_config(wrong, tmp_path / "other", termination_log)) == 1
    reason = termination_log.read_text()
    assert "HTTP 401" in reason
    assert "wrong" not in reason
    assert "reader" not in reason


def test_unreachable_host_is_retried(tmp_path: Path, termination_log: Path) -> None:
    settings = _config(
        f"http://127.0.0.1:{free_port()}/model",
        tmp_path / "m",
        termination_log,
        "--max-attempts",
        "2",
    )
    assert fetch.run(settings) == 1
    assert "gave up after 2 attempts" in termination_log.read_text()


def test_cli_contract_with_flags_and_with_environment(files: FileServer, tmp_path: Path) -> None:
    """The operator renders exactly these flags (or variables) into the init container."""
    files.routes["/model.joblib"] = [(200, MODEL_BYTES)]
    env = {**os.environ, "TERMINATION_LOG": str(tmp_path / "none")}
    by_flags = tmp_path / "flags" / "model"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "modelserver",
            "fetch",
            "--model-uri",
            files.url("/model.joblib"),
            "--model-digest",
            MODEL_DIGEST,
            "--dest",
            str(by_flags),
        ],
        env=env,
        check=True,
        timeout=60,
    )
    by_env = tmp_path / "env" / "model"
    env.update(
        MODEL_URI=files.url("/model.joblib"), MODEL_DIGEST=MODEL_DIGEST, MODEL_DEST=str(by_env)
    )
    subprocess.run([sys.executable, "-m", "modelserver", "fetch"], env=env, check=True, timeout=60)
    assert by_flags.read_bytes() == MODEL_BYTES == by_env.read_bytes()


def test_cli_reports_a_missing_destination(tmp_path: Path) -> None:
    log = tmp_path / "termination-log"
    log.touch()
    result = subprocess.run(
        [sys.executable, "-m", "modelserver", "fetch", "--model-uri", "http://x/m"],
        env={**os.environ, "TERMINATION_LOG": str(log)},
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "no destination: set --dest or MODEL_DEST" in log.read_text()


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """moto's S3-compatible server in its own process on 127.0.0.1."""
    with s3_server() as endpoint:
        yield endpoint


@pytest.fixture
def bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="models")
    s3.put_object(Bucket="models", Key="iris/model.joblib", Body=MODEL_BYTES)
    return "models"


def test_downloads_from_s3_with_aws_endpoint_url(
    s3_endpoint: str, bucket: str, tmp_path: Path, termination_log: Path
) -> None:
    dest = tmp_path / "model"
    settings = _config(
        f"s3://{bucket}/iris/model.joblib",
        dest,
        termination_log,
        "--model-digest",
        MODEL_DIGEST,
        AWS_ENDPOINT_URL=s3_endpoint,
    )
    assert fetch.run(settings) == 0
    assert dest.read_bytes() == MODEL_BYTES


def test_downloads_from_s3_with_kserve_style_s3_endpoint(
    s3_endpoint: str, bucket: str, tmp_path: Path, termination_log: Path
) -> None:
    dest = tmp_path / "model"
    settings = _config(
        f"s3://{bucket}/iris/model.joblib",
        dest,
        termination_log,
        S3_ENDPOINT=s3_endpoint.removeprefix("http://"),
        S3_USE_HTTPS="0",
    )
    assert settings.s3_endpoint == s3_endpoint
    assert fetch.run(settings) == 0
    assert dest.read_bytes() == MODEL_BYTES


def test_missing_s3_key_is_not_retried(
    s3_endpoint: str, bucket: str, tmp_path: Path, termination_log: Path
) -> None:
    dest = tmp_path / "model"
    settings = _config(
        f"s3://{bucket}/iris/missing.joblib", dest, termination_log, AWS_ENDPOINT_URL=s3_endpoint
    )
    started = time.monotonic()
    assert fetch.run(settings) == 1
    assert time.monotonic() - started < 5
    assert "NoSuchKey" in termination_log.read_text()
    assert not dest.exists()
