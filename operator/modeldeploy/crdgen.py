"""Generate the ModelDeployment CRD from the typed API models.

Kubernetes wants a *structural* OpenAPI v3 schema: every node typed, no ``$ref``, no
``anyOf``-with-null for optional fields. Pydantic's JSON schema is close; this module inlines the
definitions and rewrites the few constructs Kubernetes does not accept.

    python -m modeldeploy.crdgen --out crds/     # regenerate
    python -m modeldeploy.crdgen --check crds/   # exit 1 when crds/ is stale
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import yaml

from modeldeploy import api

CRD_FILE = f"{api.GROUP}_{api.PLURAL}.yaml"

# Pydantic keys with no meaning for (or not accepted by) the Kubernetes schema.
_DROPPED_KEYS = {"title", "$defs", "additionalProperties"}

PRINTER_COLUMNS: list[dict[str, Any]] = [
    {
        "name": "Ready",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
    },
    {
        "name": "Reason",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Ready")].reason',
    },
    {"name": "Replicas", "type": "string", "jsonPath": ".status.replicaSummary"},
    {"name": "Model", "type": "string", "jsonPath": ".status.model.uri"},
    {"name": "Canary", "type": "string", "jsonPath": ".status.canary.progress", "priority": 1},
    {"name": "Version", "type": "string", "jsonPath": ".spec.model.version", "priority": 1},
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "priority": 1},
    {"name": "URL", "type": "string", "jsonPath": ".status.url", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def _resolve(node: Any, defs: dict[str, Any]) -> Any:  # noqa: PLR0912 - one pass, one place
    """Inline ``$ref`` and rewrite pydantic-isms into structural-schema form."""
    if isinstance(node, list):
        return [_resolve(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**copy.deepcopy(target), **{k: v for k, v in node.items() if k != "$ref"}}
        return _resolve(merged, defs)
    node = dict(node)
    any_of = node.get("anyOf")
    if any_of is not None and not node.get("x-kubernetes-int-or-string"):
        # Optional[X] is anyOf [X, null]: keep X; absence already means "not set".
        non_null = [option for option in any_of if option.get("type") != "null"]
        if len(non_null) == 1:
            del node["anyOf"]
            node = {**non_null[0], **node}
            if node.get("default", ...) is None:
                del node["default"]
            return _resolve(node, defs)
    if "const" in node:
        node["enum"] = [node.pop("const")]
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED_KEYS and not (key == "additionalProperties" and isinstance(value, dict)):
            continue
        if key == "properties":
            out[key] = {name: _resolve(schema, defs) for name, schema in value.items()}
        elif key == "description":
            out[key] = " ".join(str(value).split())
        else:
            out[key] = _resolve(value, defs)
    if out.get("default", ...) is None:
        del out["default"]
    return out


def openapi_schema() -> dict[str, Any]:
    """The structural OpenAPI v3 schema of ModelDeployment."""
    raw = api.ModelDeployment.model_json_schema(by_alias=True, mode="validation")
    defs = raw.get("$defs", {})
    schema: dict[str, Any] = _resolve(raw, defs)
    # apiVersion, kind and metadata are the API server's business; keep them minimal.
    properties = schema["properties"]
    properties["apiVersion"] = {
        "type": "string",
        "description": properties["apiVersion"]["description"],
    }
    properties["kind"] = {"type": "string", "description": properties["kind"]["description"]}
    properties["metadata"] = {"type": "object"}
    schema["required"] = ["spec"]
    return schema


def render_crd() -> dict[str, Any]:
    """The CustomResourceDefinition object."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{api.PLURAL}.{api.GROUP}",
            "labels": {"app.kubernetes.io/name": "modeldeploy"},
        },
        "spec": {
            "group": api.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": api.KIND,
                "listKind": f"{api.KIND}List",
                "plural": api.PLURAL,
                "singular": api.SINGULAR,
                "shortNames": list(api.SHORT_NAMES),
                "categories": ["all", "modeldeploy"],
            },
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": openapi_schema()},
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.replicas",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                }
            ],
        },
    }


HEADER = "# Generated by `make manifests` from operator/modeldeploy/api.py. Do not edit.\n"
REFERENCE_FILE = "api-reference.md"


def _type_of(node: dict[str, Any]) -> str:
    if node.get("x-kubernetes-int-or-string"):
        return "int or string"
    if "enum" in node:
        return " \\| ".join(f"`{value}`" for value in node["enum"])
    if node.get("type") == "array":
        return f"list of {_type_of(node.get('items', {}))}"
    if node.get("type") == "object" and isinstance(node.get("additionalProperties"), dict):
        return f"map of {_type_of(node['additionalProperties'])}"
    return str(node.get("type", "any"))


def _rows(node: dict[str, Any], path: str, required: bool) -> list[str]:
    bounds = [
        f"{label} {node[key]}"
        for key, label in (
            ("minimum", ">="),
            ("maximum", "<="),
            ("minLength", "min length"),
            ("maxLength", "max length"),
            ("maxItems", "max items"),
            ("pattern", "pattern"),
        )
        if key in node
    ]
    if "default" in node:
        bounds.insert(0, f"default `{node['default']}`")
    rules = [rule["message"] for rule in node.get("x-kubernetes-validations", [])]
    notes = "; ".join([*bounds, *rules]).replace("|", "\\|")
    description = node.get("description", "").replace("|", "\\|")
    rows = [
        f"| `{path}`{' (required)' if required else ''} | {_type_of(node)} "
        f"| {description} | {notes} |"
    ]
    child = node.get("items") if node.get("type") == "array" else node
    for name, sub in (child or {}).get("properties", {}).items():
        sub_path = f"{path}[].{name}" if node.get("type") == "array" else f"{path}.{name}"
        rows.extend(_rows(sub, sub_path, name in (child or {}).get("required", [])))
    return rows


def render_reference() -> str:
    """Markdown reference of every spec and status field, generated from the same schema."""
    schema = openapi_schema()
    out = [
        "<!-- Generated by `make manifests` from operator/modeldeploy/api.py. Do not edit. -->",
        f"# {api.KIND} reference (`{api.API_VERSION}`)",
        "",
        "| field | type | description | default, bounds, rules |",
        "| --- | --- | --- | --- |",
    ]
    for top in ("spec", "status"):
        out.extend(_rows(schema["properties"][top], top, top == "spec"))
    rules = [rule["message"] for rule in schema.get("x-kubernetes-validations", [])]
    out += ["", "Rules on the whole object: " + "; ".join(rules), ""]
    return "\n".join(out)


def render_crd_yaml() -> str:
    """The CRD as the YAML text kept in crds/."""
    body = yaml.safe_dump(render_crd(), sort_keys=False, width=100, allow_unicode=True)
    return HEADER + body


def main(argv: list[str] | None = None) -> int:
    """Write or check crds/."""
    parser = argparse.ArgumentParser(prog="python -m modeldeploy.crdgen", description=__doc__)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--out", type=Path, help="directory to write the CRD into")
    group.add_argument("--check", type=Path, help="directory whose CRD must be up to date")
    parser.add_argument("--docs", type=Path, help="directory of the generated field reference")
    args = parser.parse_args(argv)
    files = {(args.out or args.check) / CRD_FILE: render_crd_yaml()}
    if args.docs is not None:
        files[args.docs / REFERENCE_FILE] = render_reference()
    if args.out is not None:
        for path, text in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
        return 0
    stale = [path for path, text in files.items() if not path.exists() or path.read_text() != text]
    for path in stale:
        print(f"{path} is stale: run `make manifests` and commit the result", file=sys.stderr)
    if not stale:
        print("generated files are up to date")
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
