"""One invalid resource per CEL rule of the CRD: the API server and the operator's Python twin
must both refuse each with the rule's message (tests/unit/test_api.py and
tests/integration/test_operator.py read this table)."""

from __future__ import annotations

from typing import Any

M = {"uri": "file:///m"}

# (test id, metadata.name, spec, the rule's message, as the API server and pydantic report it)
CEL_CASES: list[tuple[str, str, dict[str, Any], str]] = [
    ("file-uri", "ok", {"model": {"uri": "file://relative"}}, "file:// URIs need an absolute path"),
    ("pvc-uri", "ok", {"model": {"uri": "pvc://Claim/x"}}, "pvc:// URIs name a claim and a path"),
    ("s3-uri", "ok", {"model": {"uri": "s3://b"}}, "s3:// URIs name a bucket and a key"),
    (
        "reference-uri",
        "ok",
        {"model": M, "monitoring": {"reference": {"uri": "pvc://Claim/p.json"}}},
        "pvc:// URIs name a claim and a path",
    ),
    (
        "http-uri",
        "ok",
        {"model": {"uri": "https://host"}},
        "http(s):// URIs need a host and a path",
    ),
    (
        "trusted-types",
        "ok",
        {"model": {**M, "trustedTypes": ["a.B"]}},
        "trustedTypes only applies to format: skops",
    ),
    (
        "credentials-secret",
        "ok",
        {"model": {**M, "credentialsSecret": "creds"}},
        "credentialsSecret is only used to download",
    ),
    (
        "http-joblib-digest",
        "ok",
        {"model": {"uri": "http://host/m.joblib"}},
        "a joblib (pickle) model over plain http://",
    ),
    (
        "min-max",
        "ok",
        {"model": M, "autoscaling": {"minReplicas": 5, "maxReplicas": 3}},
        "minReplicas must be less than or equal to maxReplicas",
    ),
    (
        "limit-request",
        "ok",
        {"model": M, "resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1500m"}}},
        "each limit must be greater than or equal to its request",
    ),
    (
        "request-names",
        "ok",
        {"model": M, "resources": {"requests": {"gpu": 1}}},
        "requests may name cpu, memory and ephemeral-storage",
    ),
    (
        "limit-names",
        "ok",
        {"model": M, "resources": {"limits": {"gpu": 1}}},
        "limits may name cpu, memory and ephemeral-storage",
    ),
    (
        "surge-unavailable",
        "ok",
        {"model": M, "rollout": {"maxSurge": "0%", "maxUnavailable": 0}},
        "maxSurge and maxUnavailable cannot both be zero",
    ),
    (
        "canary-strategy",
        "ok",
        {"model": M, "rollout": {"canary": {"steps": [{"weight": 10}]}}},
        "rollout.canary is only used with strategy Canary",
    ),
    (
        "peer-empty",
        "ok",
        {"model": M, "networkPolicy": {"allowFrom": [{}]}},
        "a peer needs podSelector, namespaceSelector or ipBlock",
    ),
    (
        "peer-ipblock",
        "ok",
        {
            "model": M,
            "networkPolicy": {
                "allowFrom": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]
            },
        },
        "ipBlock cannot be combined with podSelector or namespaceSelector",
    ),
    (
        "metrics-peers-without-policy",
        "ok",
        {
            "model": M,
            "networkPolicy": {
                "enabled": False,
                "allowMetricsFrom": [{"namespaceSelector": {}}],
            },
        },
        "allowMetricsFrom needs the NetworkPolicy",
    ),
    (
        "rate-limit-zero",
        "ok",
        {"model": M, "server": {"rateLimit": {"requestsPerSecond": 0}}},
        "requestsPerSecond must be at least 0.01",
    ),
    (
        "replicas-autoscaling",
        "ok",
        {"model": M, "replicas": 2, "autoscaling": {"maxReplicas": 3}},
        "replicas and autoscaling are mutually exclusive",
    ),
    (
        "autoscaling-cpu",
        "ok",
        {
            "model": M,
            "autoscaling": {"maxReplicas": 3},
            "resources": {"requests": {"memory": "1Gi"}},
        },
        "autoscaling measures CPU against the CPU request",
    ),
    ("name", "x" * 64, {"model": M}, "metadata.name must be a DNS-1035 label"),
]
