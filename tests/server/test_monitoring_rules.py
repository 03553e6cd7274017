"""manifests/monitoring/prometheusrule.yaml, unit-tested with promtool on series recorded from real
server runs: every alert expression names metrics the server really exports, with the labels it
really gives them, and fires on a troubled server and stays silent on a healthy one.

Each server is scraped before and after a burst of traffic. A counter's recorded increase is
replayed once a minute for 40 minutes (``before+increasexN`` in promtool's notation) as if the
traffic went on; gauges keep their recorded value. The labels Prometheus adds when it scrapes
(namespace, pod, job) are added. The one series no model server exports, kube-state-metrics'
restart counter, is written by hand.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from .estimators_for_tests import SlowClassifier
from .support import (
    IRIS_X,
    IRIS_Y,
    TESTS,
    Models,
    ServerProcess,
    free_port,
    post_json,
    request,
    v1_body,
)
from .test_server_payload_log import Sink

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "manifests" / "monitoring" / "prometheusrule.yaml"
MINUTES = 40
SCRAPE_LABELS = {"namespace": "models", "job": "models/modelserver"}
Scrape = dict[tuple[str, tuple[tuple[str, str], ...]], tuple[str, float]]


def promtool() -> Path:
    from localcluster import binaries  # noqa: PLC0415 - hack/ is on the tests' path

    return binaries.require(["promtool"])["promtool"]


def scrape(server: ServerProcess) -> Scrape:
    """Every sample of /metrics: (name, labels) -> (the family's type, value)."""
    time.sleep(0.6)  # every worker publishes at least every half second
    text = request(server.port, "GET", "/metrics").body.decode()
    found: Scrape = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith(("_created", "_gsum", "_gcount")):
                continue
            found[(sample.name, tuple(sorted(sample.labels.items())))] = (family.type, sample.value)
    return found


def series(before: Scrape, after: Scrape, pod: str) -> list[dict[str, str]]:
    """promtool input series replaying the recorded traffic for MINUTES minutes."""
    out = []
    for (name, labels), (kind, value) in sorted(after.items()):
        start = before.get((name, labels), (kind, 0.0))[1]
        step = value - start if kind in ("counter", "histogram") else 0.0
        all_labels = {**dict(labels), **SCRAPE_LABELS, "pod": pod}
        selector = ",".join(f'{k}="{v}"' for k, v in sorted(all_labels.items()))
        first = start if kind in ("counter", "histogram") else value
        out.append({"series": f"{name}{{{selector}}}", "values": f"{first}+{step}x{MINUTES}"})
    return out


def burst(port: int, rows: np.ndarray) -> list[int]:
    """Ten requests on ten keep-alive connections opened beforehand, sent at once (so that the
    server reads them together: a slow one then refuses what overflows its queue)."""
    connections = [http.client.HTTPConnection("127.0.0.1", port, timeout=60) for _ in range(10)]
    for connection in connections:
        connection.request("GET", "/v2/health/live")
        connection.getresponse().read()

    def predict(pair: tuple[http.client.HTTPConnection, int]) -> int:
        connection, index = pair
        start = index % len(rows)
        connection.request(
            "POST", "/v1/models/troubled:predict", json.dumps(v1_body(rows[start : start + 10]))
        )
        response = connection.getresponse()
        response.read()
        return response.status

    try:
        with ThreadPoolExecutor(10) as pool:
            return list(pool.map(predict, [(c, i * 3) for i, c in enumerate(connections)]))
    finally:
        for connection in connections:
            connection.close()


def restarts(pod: str, per_minute: int) -> dict[str, str]:
    labels = f'namespace="models",pod="{pod}",container="server"'
    return {
        "series": f"kube_pod_container_status_restarts_total{{{labels}}}",
        "values": f"0+{per_minute}x{MINUTES}",
    }


@pytest.fixture(scope="module")
def recorded(models: Models, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A healthy server (in-distribution traffic, a live sink) and a troubled one (slow, over-
    loaded, shifted traffic, a dead sink), each scraped before and after its traffic."""
    tmp = tmp_path_factory.mktemp("rules")
    np.save(tmp / "iris.npy", IRIS_X)
    slow = tmp / "slow.joblib"
    joblib.dump(SlowClassifier(predict_delay=0.6).fit(IRIS_X, IRIS_Y), slow)
    for model, out in ((models.path("iris.joblib"), "iris.json"), (slow, "slow.json")):
        command = ["-m", "modelserver", "profile", "--model", str(model)]
        subprocess.run(
            [sys.executable, *command, "--data", str(tmp / "iris.npy"), "--out", str(tmp / out)],
            check=True,
            capture_output=True,
            env={**os.environ, "PYTHONPATH": str(TESTS)},  # the slow model's class
        )
    sink = Sink()
    common = ("--drift-min-rows", "20", "--model-version", "v1")
    healthy = ServerProcess(
        models.path("iris.joblib"),
        tmp,
        name="healthy",
        args=(*common, "--reference-uri", str(tmp / "iris.json"), "--payload-log-url", sink.url),
    ).start()
    troubled = ServerProcess(
        slow,
        tmp,
        name="troubled",
        args=(
            *common,
            "--reference-uri",
            str(tmp / "slow.json"),
            "--payload-log-url",
            f"http://127.0.0.1:{free_port()}/",
            "--payload-log-max-queue",
            "4",
            "--max-queue-depth",
            "1",
            "--max-batch-size",
            "1",
        ),
    ).start()
    try:
        healthy.wait_ready()
        troubled.wait_ready()
        result: dict[str, Any] = {"healthy": [scrape(healthy)], "troubled": [scrape(troubled)]}
        for start in range(0, 150, 10):
            response = post_json(
                healthy.port, "/v1/models/healthy:predict", v1_body(IRIS_X[start : start + 10])
            )
            assert response.status == 200
        shifted = IRIS_X + 3.0
        statuses = [
            status
            for round_ in range(3)
            for status in burst(troubled.port, shifted[round_ * 30 : round_ * 30 + 30])
        ]
        assert set(statuses) == {200, 503}  # some answered (slowly), some refused (overloaded)
        result["healthy"].append(scrape(healthy))
        result["troubled"].append(scrape(troubled))
        yield result
    finally:
        healthy.stop()
        troubled.stop()
        sink.close()


def alert_test(
    input_series: list[dict[str, str]], alerts: dict[str, list[dict[str, Any]]]
) -> dict[str, Any]:
    return {
        "interval": "1m",
        "input_series": input_series,
        "alert_rule_test": [
            {"eval_time": "30m", "alertname": name, "exp_alerts": expected}
            for name, expected in alerts.items()
        ],
    }


def summary(text: str) -> dict[str, str]:
    return {"summary": text}


def test_the_alerts_fire_on_a_troubled_server_and_stay_silent_on_a_healthy_one(
    recorded: dict[str, Any], tmp_path: Path
) -> None:
    healthy_before, healthy_after = recorded["healthy"]
    troubled_before, troubled_after = recorded["troubled"]
    psi = {
        dict(labels)["feature"]: value
        for (name, labels), (_, value) in troubled_after.items()
        if name == "modelserver_feature_psi"
    }
    assert sorted(psi) == ["0", "1", "2", "3"]
    assert min(psi.values()) > 0.2  # every feature was shifted
    healthy_psi = [v for (n, _), (_, v) in healthy_after.items() if n.endswith("_psi")]
    assert healthy_psi
    assert max(healthy_psi) < 0.05

    groups = yaml.safe_load(RULES.read_text())["spec"]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(groups))
    alert_names = [rule["alert"] for group in groups["groups"] for rule in group["rules"]]
    where = {"namespace": "models"}
    troubled = {"model": "troubled", **where}
    fired: dict[str, list[dict[str, Any]]] = {
        "ModelServerHighErrorRate": [
            {
                "exp_labels": {"severity": "critical", **troubled},
                "exp_annotations": summary(
                    "models/troubled: over 5% of predictions fail (5xx) for 5 minutes"
                ),
            }
        ],
        "ModelServerHighLatency": [
            {
                "exp_labels": {"severity": "warning", **troubled},
                "exp_annotations": summary(
                    "models/troubled: p99 latency over 0.5 s for 10 minutes"
                ),
            }
        ],
        "ModelFeatureDrift": [
            {
                "exp_labels": {"severity": "warning", "version": "v1", "feature": f, **troubled},
                "exp_annotations": summary(
                    f"models/troubled: feature {f} drifted from the reference profile "
                    "(PSI over 0.2)"
                ),
            }
            for f in ("0", "1", "2", "3")
        ],
        "ModelPredictionDrift": [
            {
                "exp_labels": {"severity": "warning", "version": "v1", **troubled},
                "exp_annotations": summary(
                    "models/troubled: predictions drifted from the reference profile (PSI over 0.2)"
                ),
            }
        ],
        "ModelPayloadLogDropping": [
            {
                "exp_labels": {"severity": "warning", **troubled},
                "exp_annotations": summary(
                    "models/troubled: payload-log events are dropped or fail: is the sink up, "
                    "is maxQueue large enough?"
                ),
            }
        ],
        "ModelServerRestarting": [
            {
                "exp_labels": {"severity": "warning", "pod": "troubled-0", **where},
                "exp_annotations": summary(
                    "models/troubled-0: the model server restarted more than twice in 15 minutes"
                ),
            }
        ],
    }
    assert sorted(fired) == sorted(alert_names)  # every alert is tested
    tests = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            alert_test(
                [*series(troubled_before, troubled_after, "troubled-0"), restarts("troubled-0", 1)],
                fired,
            ),
            alert_test(
                [*series(healthy_before, healthy_after, "healthy-0"), restarts("healthy-0", 0)],
                {name: [] for name in alert_names},
            ),
        ],
    }
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests, width=1000))

    for command in (("check", "rules", "rules.yaml"), ("test", "rules", "tests.yaml")):
        done = subprocess.run(
            [str(promtool()), *command], cwd=tmp_path, capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stdout + done.stderr
