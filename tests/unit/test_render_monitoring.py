"""Rendering of spec.monitoring: the reference profile fetched like the model, and the flags."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest

from modeldeploy import api, render
from modeldeploy.settings import Settings

from .conftest import make_body

DIGEST = "sha256:" + "ab" * 32


def _pod(spec: dict[str, Any], settings: Settings) -> dict[str, Any]:
    owner = render.Owner.from_body(make_body(spec))
    deployment = render.render_deployment(owner, api.parse_spec(spec), settings)
    pod: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return pod


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container["env"]}


def test_a_remote_reference_is_fetched_by_its_own_init_container_with_the_digest(
    settings: Settings,
) -> None:
    spec = {
        "model": {"uri": "s3://bucket/m.joblib", "digest": DIGEST},
        "monitoring": {
            "reference": {
                "uri": "s3://bucket/profile.json",
                "digest": DIGEST,
                "credentialsSecret": "creds",
            }
        },
    }
    pod = _pod(spec, settings)

    names = [container["name"] for container in pod["initContainers"]]
    assert names == ["fetch-model", "fetch-reference"]
    fetch = pod["initContainers"][1]
    assert fetch["args"] == ["fetch"]
    assert _env(fetch) == {
        "MODEL_URI": "s3://bucket/profile.json",
        "MODEL_DEST": "/mnt/reference/profile.json",
        "MAX_MODEL_BYTES": str(64 * 2**20),
        "MODEL_DIGEST": DIGEST,
    }
    assert fetch["envFrom"] == [{"secretRef": {"name": "creds"}}]
    assert {"name": "reference", "mountPath": "/mnt/reference"} in fetch["volumeMounts"]
    server = pod["containers"][0]
    assert _env(server)["REFERENCE_URI"] == "file:///mnt/reference/profile.json"
    assert _env(server)["REFERENCE_DIGEST"] == DIGEST
    assert _env(server)["DRIFT_WINDOW_SECONDS"] == "300"  # the server's window: the default
    assert "AWS_ACCESS_KEY_ID" not in str(server)
    assert {"name": "reference", "mountPath": "/mnt/reference", "readOnly": True} in server[
        "volumeMounts"
    ]
    assert {"name": "reference", "emptyDir": {"sizeLimit": str(64 * 2**20)}} in pod["volumes"]


def test_a_file_reference_is_read_in_place_and_a_pvc_one_from_its_claim(
    settings: Settings,
) -> None:
    in_image = _pod(
        {"model": {"uri": "file:///m"}, "monitoring": {"reference": {"uri": "file:///p.json"}}},
        settings,
    )
    assert "initContainers" not in in_image
    assert _env(in_image["containers"][0])["REFERENCE_URI"] == "file:///p.json"

    on_claim = _pod(
        {
            "model": {"uri": "file:///m"},
            "monitoring": {"reference": {"uri": "pvc://data/ref/p.json"}},
        },
        settings,
    )
    assert _env(on_claim["containers"][0])["REFERENCE_URI"] == "file:///mnt/reference/ref/p.json"
    assert {
        "name": "reference",
        "persistentVolumeClaim": {"claimName": "data", "readOnly": True},
    } in on_claim["volumes"]


def test_payload_log_settings_become_the_servers_flags(settings: Settings) -> None:
    spec = {
        "model": {"uri": "file:///m"},
        "monitoring": {
            "payloadLog": {
                "url": "http://sink.logging.svc/events",
                "sampleRate": 0.25,
                "redact": ["ssn", "3"],
                "maxQueue": 500,
            }
        },
    }
    env = _env(_pod(spec, settings)["containers"][0])
    assert env["PAYLOAD_LOG_URL"] == "http://sink.logging.svc/events"
    assert env["PAYLOAD_LOG_SAMPLE_RATE"] == "0.25"
    assert env["PAYLOAD_LOG_REDACT"] == "ssn,3"
    assert env["PAYLOAD_LOG_MAX_QUEUE"] == "500"
    assert "REFERENCE_URI" not in env


def test_without_monitoring_nothing_is_added(settings: Settings) -> None:
    env = _env(_pod({"model": {"uri": "file:///m"}}, settings)["containers"][0])
    assert not any(name.startswith(("REFERENCE_", "PAYLOAD_LOG_")) for name in env)


@pytest.mark.parametrize(
    ("monitoring", "message"),
    [
        ({"reference": {"uri": "s3://b"}}, "s3:// URIs name a bucket and a key"),
        ({"reference": {"uri": "ftp://x/p"}}, "String should match pattern"),
        ({"payloadLog": {"url": "http://s/", "sampleRate": 1.5}}, "less than or equal to 1"),
        ({"payloadLog": {"url": "sink:80"}}, "String should match pattern"),
        ({"driftThreshold": 0}, "greater than or equal to 0.001"),
        ({"driftWindowSeconds": 5}, "greater than or equal to 10"),
    ],
)
def test_bad_monitoring_settings_are_refused_naming_the_rule(
    monitoring: dict[str, Any], message: str
) -> None:
    with pytest.raises(pydantic.ValidationError, match=message):
        api.parse_spec({"model": {"uri": "file:///m"}, "monitoring": monitoring})
