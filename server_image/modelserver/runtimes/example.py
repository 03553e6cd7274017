"""Trains the image's example model: `python -m modelserver.runtimes.example --out DIR`.

The image is built with this (no model binary is committed): a StandardScaler + LogisticRegression
pipeline on scikit-learn's bundled iris data, saved as DIR/model.joblib and DIR/model.skops, with
their digests in DIR/digests.json. `--kind forest` trains a 100-tree random forest instead (for
benchmarks).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import joblib
import skops.io
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler


def train(kind: str = "logreg", seed: int = 0) -> Any:
    """A fitted iris classifier: `logreg` (scaler + logistic regression) or `forest` (100 trees)."""
    features, target = load_iris(return_X_y=True)
    if kind == "forest":
        model: Any = RandomForestClassifier(n_estimators=100, random_state=seed)
    else:
        model = Pipeline(
            [("scaler", StandardScaler()), ("classifier", LogisticRegression(max_iter=1000))]
        )
    return model.fit(features, target)


def save(model: Any, out: Path) -> dict[str, str]:
    """Writes model.joblib and model.skops to `out`; returns their `sha256:` digests."""
    out.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, out / "model.joblib")
    skops.io.dump(model, out / "model.skops")
    digests = {
        name: "sha256:" + hashlib.sha256((out / name).read_bytes()).hexdigest()
        for name in ("model.joblib", "model.skops")
    }
    (out / "digests.json").write_text(json.dumps(digests, indent=2) + "\n")
    return digests


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m modelserver.runtimes.example", description=__doc__
    )
    parser.add_argument("--out", required=True, type=Path, help="directory to write the model to")
    parser.add_argument("--kind", choices=("logreg", "forest"), default="logreg")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    digests = save(train(args.kind, args.seed), args.out)
    json.dump(digests, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
