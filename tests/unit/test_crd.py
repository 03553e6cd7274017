"""The generated CRD: up to date, structural, and carrying the public contract of API.md."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from modeldeploy import crdgen

from .conftest import ROOT


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return crdgen.render_crd()


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = []
    if isinstance(node, dict):
        out.append((path, node))
        for key, value in node.get("properties", {}).items():
            out.extend(_walk(value, f"{path}.{key}"))
        if isinstance(node.get("items"), dict):
            out.extend(_walk(node["items"], f"{path}[]"))
        if isinstance(node.get("additionalProperties"), dict):
            out.extend(_walk(node["additionalProperties"], f"{path}{{}}"))
    return out


def test_committed_crd_is_up_to_date() -> None:
    committed = (ROOT / "crds" / crdgen.CRD_FILE).read_text()
    assert committed == crdgen.render_crd_yaml(), "run `make manifests`"


def test_schema_is_structural(crd: dict[str, Any]) -> None:
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    text = yaml.safe_dump(schema)
    assert "$ref" not in text
    assert "x-kubernetes-preserve-unknown-fields" not in text
    for path, node in _walk(schema):
        assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{path} has no type"
        assert "title" not in node, path
        assert not any(option.get("type") == "null" for option in node.get("anyOf", [])), path


def test_every_spec_field_is_documented(crd: dict[str, Any]) -> None:
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    for path, node in _walk(spec, "spec"):
        if not path.endswith(("{}", "[]")):
            assert node.get("description"), f"{path} has no description"


def test_names_subresources_and_columns(crd: dict[str, Any]) -> None:
    names = crd["spec"]["names"]
    assert (names["kind"], names["plural"], names["singular"]) == (
        "ModelDeployment",
        "modeldeployments",
        "modeldeployment",
    )
    assert names["shortNames"] == ["mdep"]
    assert crd["spec"]["scope"] == "Namespaced"
    version = crd["spec"]["versions"][0]
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    assert "status" in version["subresources"]
    columns = [column["name"] for column in version["additionalPrinterColumns"]]
    for wanted in ("Ready", "Reason", "Replicas", "Model", "Age"):
        assert wanted in columns


def test_replicas_has_no_schema_default(crd: dict[str, Any]) -> None:
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert "default" not in spec["properties"]["replicas"]
    assert spec["properties"]["model"]["properties"]["format"]["default"] == "joblib"


def test_cross_field_rules_are_cel_with_messages(crd: dict[str, Any]) -> None:
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    rules = spec["x-kubernetes-validations"]
    assert any("has(self.replicas) && has(self.autoscaling)" in rule["rule"] for rule in rules)
    autoscaling = spec["properties"]["autoscaling"]["x-kubernetes-validations"]
    assert autoscaling[0]["rule"] == "self.minReplicas <= self.maxReplicas"
    for _, node in _walk(spec, "spec"):
        for rule in node.get("x-kubernetes-validations", []):
            assert rule["message"]


def test_conditions_are_a_map_list_keyed_by_type(crd: dict[str, Any]) -> None:
    status = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    conditions = status["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert set(conditions["items"]["required"]) >= {
        "type",
        "status",
        "reason",
        "lastTransitionTime",
    }


def test_check_mode_fails_on_a_stale_file(tmp_path: Any) -> None:
    (tmp_path / crdgen.CRD_FILE).write_text("stale")
    assert crdgen.main(["--check", str(tmp_path)]) == 1
    assert crdgen.main(["--out", str(tmp_path)]) == 0
    assert crdgen.main(["--check", str(tmp_path)]) == 0
