"""The server benchmark's own logic: payloads, answer checks, summaries, ratios, wrk scripts.

None of this starts a model server or needs the peers' environments; the wrk test
runs only where wrk is installed.
"""

from __future__ import annotations

import importlib
import json
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `pytest` alone does not put the repository root on the path
    sys.path.insert(0, str(ROOT))

bench_main = importlib.import_module("bench.__main__")
loadgen = importlib.import_module("bench.server.loadgen")
models = importlib.import_module("bench.server.models")
report = importlib.import_module("bench.server.report")
runner = importlib.import_module("bench.server.runner")


def run_row(server: str, protocol: str, scenario: str, **values: Any) -> dict[str, Any]:
    row = {
        "model": "pipeline",
        "scenario": scenario,
        "server": server,
        "protocol": protocol,
        "rps": 100.0,
        "p50_ms": 1.0,
        "p99_ms": 10.0,
        "errors": 0,
        "round": 0,
    }
    row.update(values)
    return row


def test_command_line_words_and_only() -> None:
    assert bench_main._split([]) == ("all", None, [])
    assert bench_main._split(["server", "--quick"]) == ("server", None, ["--quick"])
    assert bench_main._split(["--quick", "--only", "server"]) == ("all", "server", ["--quick"])
    assert bench_main._split(["--only=operator"]) == ("all", "operator", [])
    with pytest.raises(SystemExit):
        bench_main._split(["--only", "everything"])


def test_prepare_writes_models_and_bodies(tmp_path: Path) -> None:
    bench_models, payloads = models.prepare(tmp_path)
    assert [m.name for m in bench_models] == ["pipeline", "forest"]
    for m in bench_models:
        assert [p.name for p in m.directory.iterdir()] == ["model.joblib"]
        assert len(m.expected) == models.BATCH_ROWS
        assert m.expected_answers("single")[3] == [m.expected[3]]
        assert m.expected_answers("batch64") == [m.expected]
    singles = payloads.body("v1", "single").read_text().splitlines()
    assert len(singles) == models.BATCH_ROWS
    assert [json.loads(line)["instances"] for line in singles[:2]] == [
        [payloads.rows[0]],
        [payloads.rows[1]],
    ]
    (batch,) = payloads.body("v1", "batch64").read_text().splitlines()
    assert json.loads(batch)["instances"] == payloads.rows
    tensor = json.loads(payloads.body("v2", "single").read_text().splitlines()[5])["inputs"][0]
    assert tensor["shape"] == [1, 30]
    assert tensor["datatype"] == "FP64"
    assert tensor["data"] == payloads.rows[5]


def test_predictions_are_read_from_both_protocols() -> None:
    assert runner._predictions("v1", {"predictions": [0, 1]}) == [0, 1]
    v2 = {"outputs": [{"name": "predict", "shape": [2], "datatype": "INT64", "data": [1, 0]}]}
    assert runner._predictions("v2", v2) == [1, 0]
    assert runner._predictions("v2", {"error": "boom"}) is None
    assert runner._predictions("v1", "not json") is None


def test_labels_must_match_exactly() -> None:
    assert runner._same_labels([0, 1, 1.0], [0, 1, 1])
    assert not runner._same_labels([0, 1], [0, 0])
    assert not runner._same_labels([0], [0, 1])
    assert not runner._same_labels(["1"], [1])
    assert not runner._same_labels([True], [1])


def test_summary_takes_medians_and_adds_errors() -> None:
    runs = [
        run_row("ours", "v1", "single-c1", rps=100.0, errors=1, round=0),
        run_row("ours", "v1", "single-c1", rps=300.0, errors=2, round=1),
        run_row("ours", "v1", "single-c1", rps=200.0, errors=0, round=2),
    ]
    (row,) = report.summarize(runs)
    assert row["rps"] == 200.0
    assert row["errors"] == 3
    assert row["rounds"] == 3


def test_ratios_pair_ours_with_each_peer_on_its_protocol() -> None:
    runs = [
        run_row("ours", "v1", "single-c64", rps=2000.0, p99_ms=5.0),
        run_row("ours", "v2", "single-c64", rps=1000.0, p99_ms=8.0),
        run_row("kserve", "v1", "single-c64", rps=200.0, p99_ms=50.0),
        run_row("mlserver", "v2", "single-c64", rps=100.0, p99_ms=80.0),
    ]
    rows = {r["peer"]: r for r in report.ratios(runs, ["pipeline"], ["single-c64"])}
    assert rows["kserve"]["rps"] == pytest.approx(10.0)
    assert rows["kserve"]["p99"] == pytest.approx(0.1)
    assert rows["mlserver"]["rps"] == pytest.approx(10.0)
    assert rows["mlserver"]["protocol"] == "v2"


def test_targets_are_judged_but_missing_data_is_not() -> None:
    runs = [
        run_row("ours", "v1", "single-c64", rps=1200.0, p99_ms=30.0),
        run_row("kserve", "v1", "single-c64", rps=100.0, p99_ms=100.0),
    ]
    got: dict[tuple[str, str, str], list[bool | None]] = {}
    for t in report.targets(runs):
        got.setdefault((t["model"], t["scenario"], t["metric"]), []).append(t["met"])
    # 12x: over the 8x goal, under issue 10's 15x one.
    assert got[("pipeline", "single-c64", "rps")] == [True, False]
    assert got[("pipeline", "single-c64", "p99_ms")] == [False]
    assert set(got[("forest", "single-c64", "rps")]) == {None}
    assert set(got[("pipeline", "batch64-c8", "rps")]) == {None}


class _Answer200(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    paths: list[str] = []  # noqa: RUF012 - shared on purpose, written by the handler
    bodies: list[bytes] = []  # noqa: RUF012

    def do_POST(self) -> None:
        self.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
        self.paths.append(self.path)
        body = b'{"predictions": [0]}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def stub_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answer200)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.skipif(loadgen.wrk_path() is None, reason="wrk is not installed")
@pytest.mark.parametrize(
    ("protocol", "path"),
    [("v1", "/v1/models/iris:predict"), ("v2", "/v2/models/iris/infer")],
)
def test_wrk_scripts_post_each_body_to_the_protocol_path(
    stub_server: str, tmp_path: Path, protocol: str, path: str
) -> None:
    body = tmp_path / "bodies.jsonl"
    body.write_text('{"instances": [[1.0]]}\n{"instances": [[2.0]]}\n')
    _Answer200.paths.clear()
    _Answer200.bodies.clear()
    wrk = loadgen.wrk_path()
    assert wrk is not None
    result = loadgen.run_wrk(
        wrk=wrk,
        base_url=stub_server,
        protocol=protocol,
        model_name="iris",
        body=body,
        connections=2,
        duration_s=1,
        threads=1,
    )
    assert result.requests > 0
    assert result.errors == 0
    assert result.latency_us["p50"] > 0
    assert set(_Answer200.paths) == {path}
    # The bodies are sent in turn.
    assert set(_Answer200.bodies) == {b'{"instances": [[1.0]]}', b'{"instances": [[2.0]]}'}
