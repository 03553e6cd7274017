"""Helpers for unit tests of the operator's pure layers (no cluster)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from modeldeploy.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "manifests" / "samples"


def make_body(spec: dict[str, Any], name: str = "iris", generation: int = 1) -> dict[str, Any]:
    """A ModelDeployment body as the API server would hand it to the operator."""
    return {
        "apiVersion": "serving.modeldeploy.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {
            "name": name,
            "namespace": "models",
            "uid": "0d9a3c1e-0000-4000-8000-000000000001",
            "generation": generation,
        },
        "spec": spec,
    }


def load_sample(name: str) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load((SAMPLES / name).read_text())
    return body


@pytest.fixture
def settings() -> Settings:
    return Settings(server_image="registry.example/modelserver:1.2.3")
