"""Prediction monitoring on the real node: drift against a reference profile, and payload logging.

One ModelDeployment serves the example iris model with a reference profile written by
``python -m modelserver profile`` from the iris data, and logs every request to a sink pod
behind a Service (found through cluster DNS). A client pod sends rows drawn from the training
data, then rows whose petals are far longer than any in it, then training rows again:
``ModelDrift`` stays False, turns True with an Event naming the petal features, and turns False.
The sink receives CloudEvents with the redacted feature replaced; once the sink is gone the
predictions go on unharmed and the server counts the events it could not deliver.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from sklearn.datasets import load_iris

from localcluster import images
from modeldeploy import scrape

from .support import (
    ROOT,
    Models,
    client_counts,
    file_server,
    load_client_pod,
    script_pod,
    wait_for,
)

NAME = "iris-monitored"
FILE_URI = "file:///opt/models/iris/model.joblib"
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
WINDOW = 20  # monitoring.driftWindowSeconds: the servers' window and the sustain period
THRESHOLD = 0.2

#: The payload sink: records every CloudEvent it is sent and prints, once a second, how many it
#: has and the first few in full (headers and body) as one JSON line.
SINK = r"""
import http.server, json, threading, time
events, lock = [], threading.Lock()
class Sink(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        ce = {k.lower(): v for k, v in self.headers.items() if k.lower().startswith("ce-")}
        with lock:
            events.append({"headers": ce, "body": json.loads(body)})
        self.send_response(202)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("0.0.0.0", 8080), Sink)
threading.Thread(target=server.serve_forever, daemon=True).start()
while True:
    time.sleep(1)
    with lock:
        print(json.dumps({"count": len(events), "first": events[:8]}), flush=True)
"""


def _profile(model: bytes, folder: Path) -> bytes:
    """The reference profile, written as users write it: the CLI on the training data."""
    x, _ = load_iris(return_X_y=True)
    data = folder / "iris.csv"
    with data.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(FEATURES)
        writer.writerows(x.tolist())
    (folder / "model.joblib").write_bytes(model)
    out = folder / "profile.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "server_image"), *sys.path]))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "modelserver",
            "profile",
            "--model",
            str(folder / "model.joblib"),
            "--data",
            str(data),
            "--out",
            str(out),
        ],
        check=True,
        env=env,
        timeout=120,
    )
    return out.read_bytes()


def _spec(reference_uri: str, digest: str, sink: str) -> dict[str, Any]:
    return {
        "model": {"uri": FILE_URI, "format": "joblib", "version": "1"},
        "replicas": 1,
        "monitoring": {
            "reference": {"uri": reference_uri, "digest": digest},
            "driftThreshold": THRESHOLD,
            "driftWindowSeconds": WINDOW,
            "payloadLog": {
                "url": sink,
                "sampleRate": 1,
                "redact": ["sepal_length"],
                "maxQueue": 200,
            },
        },
    }


def _metrics(models: Models) -> list[str]:
    """Every ready model pod's metrics, read on the health port as Prometheus does."""
    texts = []
    for pod in models.pods(NAME):
        if pod.status.pod_ip and pod.metadata.deletion_timestamp is None:
            with contextlib.suppress(OSError):
                texts.append(scrape.fetch(f"http://{pod.status.pod_ip}:8081/metrics"))
    return texts


def _payload_outcomes(texts: list[str]) -> dict[str, float]:
    out = {"sent": 0.0, "dropped": 0.0, "failed": 0.0}
    for text in texts:
        for line in text.splitlines():
            if line.startswith("modelserver_payload_log_events_total{"):
                labels, value = line.rsplit(" ", 1)
                for outcome in out:
                    if f'outcome="{outcome}"' in labels:
                        out[outcome] += float(value)
    return out


def _drift(models: Models) -> dict[str, Any]:
    condition = models.current_condition(models.get(NAME), "ModelDrift")
    assert condition is not None, "no ModelDrift condition on a resource with a reference"
    return condition


def _wait_drift(models: Models, wanted: str, timeout: float) -> dict[str, Any]:
    return wait_for(
        f"ModelDrift {wanted}",
        lambda: (c := _drift(models))["status"] == wanted and c,
        timeout=timeout,
        interval=1,
    )


def _start_client(core: client.CoreV1Api, namespace: str, name: str, url: str, rows: Any) -> None:
    core.create_namespaced_pod(
        namespace, load_client_pod(name, url, 3, images.SERVER_IMAGE, rows=rows)
    )
    wait_for(
        f"the {name} client's first answers",
        lambda: (c := client_counts(core, namespace, name)) and c["ok"] >= 20,
        timeout=120,
        interval=1,
    )


def _stop_client(core: client.CoreV1Api, namespace: str, name: str) -> dict[str, Any]:
    counts = client_counts(core, namespace, name)
    assert counts is not None
    core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
    wait_for(f"the {name} client gone", lambda: _gone(core, namespace, name), 60, interval=1)
    return counts


def _gone(core: client.CoreV1Api, namespace: str, name: str) -> bool:
    try:
        core.read_namespaced_pod(name, namespace)
    except ApiException as error:
        return bool(error.status == 404)
    return False


@pytest.mark.timeout(600)
def test_drift_is_detected_and_payloads_are_logged_without_slowing_predictions(
    models: Models,
    namespace: str,
    node_ip: str,
    example_model: bytes,
    tmp_path: Path,
) -> None:
    core = models.core
    profile = _profile(example_model, tmp_path)
    digest = "sha256:" + hashlib.sha256(profile).hexdigest()

    core.create_namespaced_pod(namespace, script_pod("sink", images.SERVER_IMAGE, SINK))
    core.create_namespaced_service(
        namespace,
        {
            "metadata": {"name": "sink"},
            "spec": {"selector": {"app": "sink"}, "ports": [{"port": 80, "targetPort": 8080}]},
        },
    )
    sink_url = f"http://sink.{namespace}.svc.cluster.local/events"

    with file_server({"/profile.json": profile}, node_ip) as (base, _):
        models.create(NAME, _spec(f"{base}/profile.json", digest, sink_url))
        body = models.wait_condition(NAME, "Ready", timeout=180)
    url = f"{body['status']['url']}/v1/models/{NAME}:predict"
    x, _ = load_iris(return_X_y=True)
    training = [[round(v, 1) for v in row] for row in x.tolist()]
    shifted = [[a, b, c + 4.0, d + 2.0] for a, b, c, d in training]

    # 1. Traffic like the training data: PSI figures under the threshold, ModelDrift False.
    _start_client(core, namespace, "calm", url, training)

    def psi_figures() -> dict[str, float] | None:
        figures = scrape.worst(scrape.drift_figures(text) for text in _metrics(models))
        return figures if "predictions" in figures else None

    figures = wait_for("PSI figures from the model's pods", psi_figures, timeout=90, interval=1)
    assert max(figures.values()) < THRESHOLD, figures
    # Watched for longer than the sustain period: a sustained excursion would have flipped it.
    calm_seen = []
    end = time.monotonic() + WINDOW * 1.5
    while time.monotonic() < end:
        calm_seen.append(_drift(models)["status"])
        time.sleep(1)
    assert set(calm_seen) == {"False"}, calm_seen

    # The payload sink has the events: a request and its response per call, the same ce-id,
    # the model named, the redacted feature replaced by null.
    logged = wait_for(
        "payload events at the sink",
        lambda: (c := client_counts(core, namespace, "sink")) and c["count"] >= 8 and c,
        timeout=60,
        interval=1,
    )
    by_id: dict[str, dict[str, Any]] = {}
    for event in logged["first"]:
        headers = event["headers"]
        assert headers["ce-specversion"] == "1.0"
        assert headers["ce-modelname"] == NAME
        assert headers["ce-modelversion"] == "1"
        kind = headers["ce-type"].rsplit(".", 1)[1]
        by_id.setdefault(headers["ce-id"], {})[kind] = event["body"]
    pairs = [pair for pair in by_id.values() if {"request", "response"} <= pair.keys()]
    assert pairs, logged["first"]
    for pair in pairs:
        rows = pair["request"]["instances"]
        assert all(row[0] is None for row in rows), rows  # sepal_length: redacted
        assert all(isinstance(v, float) for row in rows for v in row[1:]), rows
        assert len(pair["response"]["predictions"]) == len(rows)

    # 2. The sink goes away; then traffic unlike the training data: ModelDrift True, an Event
    # naming the petal features; predictions unharmed; the undelivered events counted.
    before = _payload_outcomes(_metrics(models))
    _stop_client(core, namespace, "calm")
    core.delete_namespaced_pod("sink", namespace, grace_period_seconds=0)
    wait_for("the sink gone", lambda: _gone(core, namespace, "sink"), 60, interval=1)
    started = time.monotonic()
    _start_client(core, namespace, "shifted", url, shifted)
    drifting = _wait_drift(models, "True", timeout=WINDOW * 6)
    detected_after = time.monotonic() - started
    assert drifting["reason"] == "DriftDetected"
    assert "feature petal_length" in drifting["message"], drifting
    assert "feature petal_width" in drifting["message"], drifting
    events = core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={NAME}")
    drift_events = [e for e in events.items if e.reason == "ModelDriftTrue"]
    assert drift_events, [(e.reason, e.message) for e in events.items]
    assert "petal_length" in drift_events[0].message
    after = wait_for(
        "undelivered payload events counted",
        lambda: (
            (o := _payload_outcomes(_metrics(models)))["dropped"] + o["failed"]
            > before["dropped"] + before["failed"]
            and o
        ),
        timeout=60,
        interval=1,
    )
    shifted_counts = _stop_client(core, namespace, "shifted")
    assert shifted_counts["failed"] == 0, shifted_counts["errors"]

    # 3. Training-like traffic again: ModelDrift back to False once that has lasted.
    _start_client(core, namespace, "calm", url, training)
    calm_again = _wait_drift(models, "False", timeout=WINDOW * 8)
    assert calm_again["reason"] == "NoDrift"
    final = _stop_client(core, namespace, "calm")
    assert final["failed"] == 0, final["errors"]
    print(
        f"drift detected {detected_after:.0f}s after shifted traffic began "
        f"(window {WINDOW}s); payload events with the sink down: {after}; "
        f"{shifted_counts['ok'] + final['ok']} predictions meanwhile, none failed"
    )
