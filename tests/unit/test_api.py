"""The typed API: defaults, bounds and the rules that have a Python twin of their CEL."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from modeldeploy import api
from modeldeploy.reconcile import describe_validation_error

from .conftest import SAMPLES, load_sample


@pytest.mark.parametrize(
    "sample", sorted(p.name for p in SAMPLES.glob("*.yaml") if p.stem != "kustomization")
)
def test_every_sample_parses(sample: str) -> None:
    body = load_sample(sample)
    parsed = api.ModelDeployment.model_validate(body)
    assert parsed.spec.model.uri == body["spec"]["model"]["uri"]


def test_defaults_are_applied_and_replicas_is_not_defaulted() -> None:
    spec = api.parse_spec({"model": {"uri": "file:///m.joblib"}})
    assert spec.model.format == "joblib"
    assert spec.replicas is None
    assert spec.suspend is False
    assert api.parse_spec(
        {"model": {"uri": "file:///m"}, "autoscaling": {"maxReplicas": 3}}
    ).autoscaling == (
        api.Autoscaling(min_replicas=1, max_replicas=3, target_cpu_utilization_percentage=70)
    )


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"model": {"uri": "ftp://x/y"}}, "spec.model.uri"),
        ({"model": {"uri": "file:///m", "format": "pickle"}}, "spec.model.format"),
        ({"model": {"uri": "file:///m", "digest": "sha256:abc"}}, "spec.model.digest"),
        ({"model": {"uri": "file:///m"}, "replicas": -1}, "spec.replicas"),
        (
            {"model": {"uri": "file:///m"}, "autoscaling": {"maxReplicas": 0}},
            "spec.autoscaling.maxReplicas",
        ),
        (
            {
                "model": {"uri": "file:///m"},
                "autoscaling": {"maxReplicas": 2, "targetCPUUtilizationPercentage": 101},
            },
            "spec.autoscaling.targetCPUUtilizationPercentage",
        ),
        (
            {"model": {"uri": "file:///m"}, "resources": {"requests": {"cpu": "lots"}}},
            "spec.resources.requests.cpu",
        ),
        ({"model": {"uri": "file:///m"}, "rollout": {"maxSurge": "ten"}}, "spec.rollout.maxSurge"),
        ({"model": {"uri": "file:///m"}, "replica": 2}, "spec.replica"),
        ({}, "spec.model"),
    ],
)
def test_invalid_specs_name_the_field(spec: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        api.parse_spec(spec)
    assert field in describe_validation_error(caught.value)


def test_replicas_and_autoscaling_are_exclusive() -> None:
    with pytest.raises(ValidationError, match="mutually exclusive"):
        api.parse_spec(
            {"model": {"uri": "file:///m"}, "replicas": 2, "autoscaling": {"maxReplicas": 3}}
        )


def test_min_replicas_above_max_is_refused() -> None:
    with pytest.raises(ValidationError, match="minReplicas must be less"):
        api.parse_spec(
            {"model": {"uri": "file:///m"}, "autoscaling": {"minReplicas": 5, "maxReplicas": 3}}
        )


def test_quantities_accept_numbers_and_suffixes() -> None:
    spec = api.parse_spec(
        {"model": {"uri": "file:///m"}, "resources": {"requests": {"cpu": 1, "memory": "1.5Gi"}}}
    )
    assert spec.resources is not None
    assert spec.resources.requests == {"cpu": 1, "memory": "1.5Gi"}
