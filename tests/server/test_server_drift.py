"""Drift: the reference profile written by `python -m modelserver profile`, and the PSI and
out-of-range figures a server computes from real traffic against it, checked against PSI computed
here from the profile file and the rows sent."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.linear_model import LogisticRegression

from modelserver.monitoring import drift

from .support import ServerProcess, post_json, running, v1_body, v2_body
from .test_server_monitoring import samples

X, Y = make_classification(n_samples=4000, n_features=6, n_informative=4, random_state=1)
TRAIN, FRESH = X[:2000], X[2000:]
SHIFT = np.array([1.5, -1.0, 0, 0, 0, 0])  # features 0 and 1 move; the others stay


def profile_command(
    model: Path, data: Path, out: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "modelserver",
            "profile",
            "--model",
            str(model),
            "--data",
            str(data),
            "--out",
            str(out),
            *extra,
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A classifier, its training data as a CSV with a header, and the profile written from them."""
    folder = tmp_path_factory.mktemp("drift")
    model = LogisticRegression(max_iter=500).fit(TRAIN, Y[:2000])
    joblib.dump(model, folder / "model.joblib")
    header = ",".join(f"f{index}" for index in range(6))
    np.savetxt(folder / "train.csv", TRAIN, delimiter=",", header=header, comments="")
    result = profile_command(folder / "model.joblib", folder / "train.csv", folder / "profile.json")
    assert result.returncode == 0, result.stderr
    return {
        "folder": folder,
        "model": model,
        "profile": json.loads((folder / "profile.json").read_text()),
    }


@pytest.fixture(scope="module")
def drift_servers(trained: dict[str, Any]) -> Iterator[dict[str, ServerProcess]]:
    folder = trained["folder"]
    args = ("--reference-uri", f"file://{folder / 'profile.json'}", "--drift-min-rows", "100")
    with running(
        {
            name: ServerProcess(folder / "model.joblib", folder, name="m", args=args)
            for name in ("steady", "shifted")
        }
    ) as servers:
        yield servers


def expected_psi(edges: list[float], fractions: list[float], values: np.ndarray) -> float:
    """PSI of `values` against a profile's bins, as API.md and drift.py define it."""
    index = np.array([sum(1 for edge in edges if edge < value) for value in values])
    actual = np.bincount(index, minlength=len(fractions)) / len(values)
    e = np.maximum(np.asarray(fractions), 1e-4)
    a = np.maximum(actual, 1e-4)
    return float(((a - e) * np.log(a / e)).sum())


def send(server: ServerProcess, rows: np.ndarray) -> None:
    """Half the rows over V1, half over V2, 100 a request."""
    for start in range(0, len(rows), 100):
        chunk = rows[start : start + 100]
        if start % 200 == 0:
            response = post_json(server.port, "/v1/models/m:predict", v1_body(chunk))
        else:
            response = post_json(server.port, "/v2/models/m/infer", v2_body(chunk))
        assert response.status == 200, response.body


def test_profile_holds_quantile_bins_ranges_and_the_prediction_distribution(
    trained: dict[str, Any],
) -> None:
    profile = trained["profile"]
    assert profile["rows"] == 2000
    assert [feature["name"] for feature in profile["features"]] == [f"f{i}" for i in range(6)]
    for column, feature in enumerate(profile["features"]):
        values = TRAIN[:, column]
        assert feature["low"] == pytest.approx(values.min())
        assert feature["high"] == pytest.approx(values.max())
        assert feature["missing"] == 0
        assert len(feature["edges"]) == 9
        assert feature["fractions"] == pytest.approx([0.1] * 10, abs=0.001)  # deciles
    predicted = trained["model"].predict(TRAIN)
    assert profile["prediction"]["classes"] == ["0", "1"]
    assert profile["prediction"]["fractions"] == pytest.approx(
        [np.mean(predicted == 0), np.mean(predicted == 1)]
    )


def test_profile_of_a_regressor_from_npy_with_missing_values(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1000, 3))
    y = x @ [3.0, -2.0, 1.0] + rng.normal(size=1000)
    x[:100, 2] = np.nan  # HistGradientBoosting takes missing values
    joblib.dump(HistGradientBoostingRegressor(max_iter=20).fit(x, y), tmp_path / "r.joblib")
    np.save(tmp_path / "x.npy", x)

    result = profile_command(tmp_path / "r.joblib", tmp_path / "x.npy", tmp_path / "p.json")

    assert result.returncode == 0, result.stderr
    profile = json.loads((tmp_path / "p.json").read_text())
    assert [feature["name"] for feature in profile["features"]] == ["0", "1", "2"]
    assert [feature["missing"] for feature in profile["features"]] == [0, 0, 0.1]
    prediction = profile["prediction"]
    assert len(prediction["edges"]) == 9
    assert prediction["fractions"] == pytest.approx([0.1] * 10, abs=0.02)


def test_profile_refuses_data_that_does_not_fit_the_model(
    trained: dict[str, Any], tmp_path: Path
) -> None:
    np.save(tmp_path / "narrow.npy", TRAIN[:, :4])
    result = profile_command(
        trained["folder"] / "model.joblib", tmp_path / "narrow.npy", tmp_path / "p.json"
    )
    assert result.returncode == 1
    assert "the data has 4 columns, the model takes 6" in result.stderr
    assert not (tmp_path / "p.json").exists()


def test_in_distribution_traffic_keeps_every_psi_near_zero(
    drift_servers: dict[str, ServerProcess], trained: dict[str, Any]
) -> None:
    server = drift_servers["steady"]
    send(server, FRESH)

    psi = {
        dict(k)["feature"]: v for k, v in samples(server.port, "modelserver_feature_psi").items()
    }
    prediction_psi = list(samples(server.port, "modelserver_prediction_psi").values())
    rows = samples(server.port, "modelserver_drift_window_rows")

    assert list(rows.values()) == [2000.0]
    assert set(psi) == {f"f{i}" for i in range(6)}
    for column, feature in enumerate(trained["profile"]["features"]):
        computed = expected_psi(feature["edges"], feature["fractions"], FRESH[:, column])
        assert psi[feature["name"]] == pytest.approx(computed, abs=1e-5)
        assert psi[feature["name"]] < 0.05
    assert len(prediction_psi) == 1
    assert prediction_psi[0] < 0.05
    out_of_range = samples(server.port, "modelserver_feature_out_of_range_total")
    for column, feature in enumerate(trained["profile"]["features"]):
        values = FRESH[:, column]
        count = int(np.sum((values < feature["low"]) | (values > feature["high"])))
        key = (("feature", feature["name"]), ("model", "m"), ("version", ""))
        assert out_of_range.get(key, 0.0) == count


def test_shifted_traffic_raises_the_psi_of_the_shifted_features_only(
    drift_servers: dict[str, ServerProcess], trained: dict[str, Any]
) -> None:
    server = drift_servers["shifted"]
    shifted = FRESH + SHIFT * FRESH.std(axis=0)
    send(server, shifted)

    psi = {
        dict(k)["feature"]: v for k, v in samples(server.port, "modelserver_feature_psi").items()
    }
    out_of_range = {
        dict(k)["feature"]: v
        for k, v in samples(server.port, "modelserver_feature_out_of_range_total").items()
    }

    profile = trained["profile"]
    for column, feature in enumerate(profile["features"]):
        computed = expected_psi(feature["edges"], feature["fractions"], shifted[:, column])
        assert psi[feature["name"]] == pytest.approx(computed, abs=1e-5)
    assert psi["f0"] > 0.2
    assert psi["f1"] > 0.2
    assert all(psi[f"f{i}"] < 0.05 for i in range(2, 6))
    high = profile["features"][0]["high"]
    assert out_of_range["f0"] == float(np.sum(shifted[:, 0] > high))
    assert out_of_range["f0"] > 0


def test_a_profile_that_does_not_fit_the_model_stops_the_server_with_a_reason(
    trained: dict[str, Any], tmp_path: Path
) -> None:
    profile = dict(trained["profile"])
    profile["features"] = profile["features"][:5]
    (tmp_path / "bad.json").write_text(json.dumps(profile))
    server = ServerProcess(
        trained["folder"] / "model.joblib",
        tmp_path,
        args=("--reference-uri", str(tmp_path / "bad.json")),
    ).start()
    try:
        assert server.wait_exit() != 0
    finally:
        server.stop()
    reason = server.termination_log.read_text()
    assert "the reference profile has 5 features, the model takes 6" in reason


def test_a_reference_whose_digest_differs_is_never_used(
    trained: dict[str, Any], tmp_path: Path
) -> None:
    server = ServerProcess(
        trained["folder"] / "model.joblib",
        tmp_path,
        args=(
            "--reference-uri",
            str(trained["folder"] / "profile.json"),
            "--reference-digest",
            "sha256:" + "0" * 64,
        ),
    ).start()
    try:
        assert server.wait_exit() != 0
    finally:
        server.stop()
    assert "reference profile:" in server.termination_log.read_text()
    assert "sha256" in server.termination_log.read_text()


@pytest.mark.parametrize("edges_per_feature", [3, 9, 300])
def test_bin_indices_counts_the_edges_below_each_value(edges_per_feature: int) -> None:
    """The binning of every kept row agrees with a plain per-feature search, ties, infinities and
    padding included (300 edges: counts that no longer fit in a byte)."""
    rng = np.random.default_rng(7)
    edge_lists = [
        np.unique(np.round(rng.normal(size=edges_per_feature), 3)).tolist() for _ in range(4)
    ]
    edge_lists.append([0.5])  # a short row, padded with +inf
    edges = drift.padded_edges(edge_lists)
    x = np.round(rng.normal(size=(257, len(edge_lists))), 3)
    x[0] = np.inf
    x[1] = -np.inf
    x[2] = [feature_edges[-1] for feature_edges in edge_lists]  # ties: an edge is not below itself
    got = drift.bin_indices(x, edges)
    if edges_per_feature == 300:
        assert got.max() > 253
    for column, feature_edges in enumerate(edge_lists):
        want = np.searchsorted(np.asarray(feature_edges), x[:, column], side="left")
        assert got[:, column].tolist() == want.tolist()
