"""The typed API: defaults, bounds, every CEL rule's Python twin, quantities, redaction."""

from __future__ import annotations

from decimal import Decimal

import pytest
from pydantic import ValidationError

from modeldeploy import api, crdgen
from modeldeploy.reconcile import describe_validation_error

from .cel_cases import CEL_CASES
from .conftest import SAMPLES, load_sample, make_body


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
        api.parse_resource(make_body(spec))
    assert field in describe_validation_error(caught.value)


def _crd_rules(node: object) -> list[dict[str, str]]:
    if isinstance(node, dict):
        found = list(node.get("x-kubernetes-validations", []))
        return found + [rule for value in node.values() for rule in _crd_rules(value)]
    if isinstance(node, list):
        return [rule for value in node for rule in _crd_rules(value)]
    return []


def test_every_cel_rule_has_a_python_twin_and_a_case() -> None:
    rules = _crd_rules(crdgen.render_crd())
    # 22 on main (PeerSelector's two rules stand under allowFrom and allowMetricsFrom), and the
    # four URI rules hold for spec.monitoring.reference too.
    assert len(rules) == 26
    assert {rule["rule"] for rule in rules} == set(api.TWINS)
    assert {rule["message"] for rule in rules} == {
        next(r["message"] for r in rules if message in r["message"])
        for _, _, _, message in CEL_CASES
    }, "each rule is broken by exactly one case of the shared table"


@pytest.mark.parametrize(
    ("name", "spec", "message"), [c[1:] for c in CEL_CASES], ids=[c[0] for c in CEL_CASES]
)
def test_python_twins_refuse_what_the_cel_rules_refuse(
    name: str, spec: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        api.parse_resource(make_body(spec, name=name))
    assert message in describe_validation_error(caught.value)


@pytest.mark.parametrize(
    ("quantity", "value"),
    [("0.5m", "0.0005"), ("1500u", "0.0015"), ("1k", "1000"), ("2Gi", str(2**31)), ("1e3", "1000"),
     (2, "2"), ("1.5", "1.5"), ("500m", "0.5"), ("3E", "3000000000000000000"), (".5", "0.5")],
)  # fmt: skip
def test_every_schema_quantity_parses(quantity: int | str, value: str) -> None:

    assert api.parse_quantity(quantity) == Decimal(value)
    with pytest.raises(ValueError, match="not a Kubernetes quantity"):
        api.parse_quantity("1.5 cores")


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        (
            "https://alice:S3cr3tPass@models.example/m.joblib",
            "https://***@models.example/m.joblib",
        ),
        ("https://token@models.example/m", "https://***@models.example/m"),
        (
            "https://b.s3.amazonaws.com/m?X-Amz-Credential=AKIA&X-Amz-Signature=abc123#frag",
            "https://b.s3.amazonaws.com/m?X-Amz-Credential=***&X-Amz-Signature=***",
        ),
        ("s3://bucket/key", "s3://bucket/key"),
        ("file:///opt/models/m.joblib", "file:///opt/models/m.joblib"),
    ],
)
def test_uris_are_redacted_before_anyone_can_read_them(uri: str, shown: str) -> None:
    assert api.redact_uri(uri) == shown
    assert "S3cr3tPass" not in api.redact_uri(uri)
    assert "abc123" not in api.redact_uri(uri)


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
