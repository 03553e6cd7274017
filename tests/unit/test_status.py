"""Status computed from observed children: kstatus semantics, honest phases, no churn."""

from __future__ import annotations

from typing import Any

import pytest

from modeldeploy import api, status

NOW = "2026-11-27T10:00:00Z"
LATER = "2026-11-27T10:05:00Z"
SPEC = api.parse_spec({"model": {"uri": "file:///m.joblib", "version": "7"}, "replicas": 3})


def deployment(
    *,
    replicas: int = 3,
    ready: int = 3,
    updated: int = 3,
    available: int = 3,
    current: int | None = None,
    generation: int = 2,
    observed: int = 2,
    progressing: dict[str, str] | None = None,
    desired: int = 3,
) -> dict[str, Any]:
    conditions = [{"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}]
    if progressing:
        conditions = [progressing]
    return {
        "metadata": {"generation": generation},
        "spec": {"replicas": desired},
        "status": {
            "observedGeneration": observed,
            "replicas": replicas if current is None else current,
            "readyReplicas": ready,
            "updatedReplicas": updated,
            "availableReplicas": available,
            "conditions": conditions,
        },
    }


def observe(
    dep: dict[str, Any] | None, spec: api.ModelDeploymentSpec | None = SPEC, **kw: Any
) -> status.Observed:
    return status.Observed(
        generation=kw.pop("generation", 4),
        spec=spec,
        spec_error=kw.pop("spec_error", None),
        deployment=dep,
        pod_failure=kw.pop("pod_failure", None),
        selector="app.kubernetes.io/instance=iris,app.kubernetes.io/name=modelserver",
        url="http://iris.models.svc.cluster.local",
        canary=kw.pop("canary", None),
        drift=kw.pop("drift", None),
        drift_clock=kw.pop("drift_clock", None),
    )


def conditions(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in result["conditions"]}


def test_ready_when_every_replica_is_updated_and_available() -> None:
    result, transitions = status.compute_status(observe(deployment()), None, NOW)
    cond = conditions(result)
    assert result["phase"] == "Ready"
    assert cond["Ready"]["status"] == "True"
    assert cond["Reconciling"]["status"] == "False"
    assert cond["Stalled"]["status"] == "False"
    assert result["observedGeneration"] == 4, (
        "the resource's own generation, never the Deployment's"
    )
    assert all(c["observedGeneration"] == 4 for c in result["conditions"])
    assert result["replicaSummary"] == "3/3"
    assert result["model"] == {"uri": "file:///m.joblib", "version": "7"}
    assert transitions == [], "Ready on a first look is routine: no Event (it costs a write)"


def test_creating_before_the_deployment_exists() -> None:
    result, _ = status.compute_status(observe(None), None, NOW)
    assert result["phase"] == "Pending"
    assert conditions(result)["Reconciling"]["status"] == "True"
    assert conditions(result)["Ready"]["status"] == "False"


def test_rollout_in_progress_is_reconciling_with_progress_counts() -> None:
    dep = deployment(updated=1, available=3, current=4)
    result, _ = status.compute_status(observe(dep), None, NOW)
    cond = conditions(result)
    assert result["phase"] == "Progressing"
    assert cond["Reconciling"] == {**cond["Reconciling"], "status": "True", "reason": "RollingOut"}
    assert "1/3 updated" in cond["Reconciling"]["message"]
    assert cond["Available"]["status"] == "True", "old replicas keep serving during the rollout"
    assert result["updatedReplicas"] == 1


def test_unobserved_deployment_generation_is_not_ready() -> None:
    result, _ = status.compute_status(observe(deployment(generation=3, observed=2)), None, NOW)
    assert conditions(result)["Reconciling"]["reason"] == "RolloutPending"
    assert conditions(result)["Ready"]["status"] == "False"


def test_progress_deadline_exceeded_is_stalled() -> None:
    dep = deployment(
        updated=1,
        available=3,
        current=4,
        progressing={
            "type": "Progressing",
            "status": "False",
            "reason": "ProgressDeadlineExceeded",
            "message": "x",
        },
    )
    result, transitions = status.compute_status(observe(dep), None, NOW)
    cond = conditions(result)
    assert cond["Stalled"]["status"] == "True"
    assert cond["Stalled"]["reason"] == "ProgressDeadlineExceeded"
    assert cond["Reconciling"]["status"] == "False"
    assert result["phase"] == "Degraded", "old replicas still serve"
    assert any(t.type == "Stalled" and t.warning for t in transitions)


def test_pod_failure_with_termination_message_is_stalled_with_its_reason() -> None:
    pods = [
        {
            "metadata": {"name": "iris-abc"},
            "status": {
                "containerStatuses": [
                    {
                        "name": "server",
                        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                        "lastState": {
                            "terminated": {
                                "message": "digest mismatch: expected sha256:aa got sha256:bb\n"
                            }
                        },
                    }
                ]
            },
        }
    ]
    failure = status.summarize_pod_failure(pods)
    assert failure == status.PodFailure(
        reason="ModelLoadFailed",
        message="pod iris-abc container server: digest mismatch: expected sha256:aa got sha256:bb",
    )
    dep = deployment(updated=1, available=3, current=4)
    result, _ = status.compute_status(observe(dep, pod_failure=failure), None, NOW)
    assert conditions(result)["Stalled"]["reason"] == "ModelLoadFailed"
    assert "digest mismatch" in conditions(result)["Ready"]["message"]


def test_autoscaled_resource_is_not_ready_below_min_replicas() -> None:
    spec = api.parse_spec(
        {"model": {"uri": "file:///m"}, "autoscaling": {"minReplicas": 2, "maxReplicas": 4}}
    )
    one = deployment(replicas=1, ready=1, updated=1, available=1, desired=1)
    result, _ = status.compute_status(observe(one, spec), None, NOW)
    assert result["desiredReplicas"] == 2
    assert conditions(result)["Ready"]["status"] == "False"
    two = deployment(replicas=2, ready=2, updated=2, available=2, desired=2)
    result, _ = status.compute_status(observe(two, spec), result, LATER)
    assert conditions(result)["Ready"]["status"] == "True"


def test_healthy_pods_have_no_failure() -> None:
    pods = [
        {
            "metadata": {"name": "p"},
            "status": {"containerStatuses": [{"name": "server", "state": {"running": {}}}]},
        }
    ]
    assert status.summarize_pod_failure(pods) is None


def test_invalid_spec_is_stalled_and_failed() -> None:
    result, _ = status.compute_status(
        observe(None, spec=None, spec_error="spec.replicas: bad"), None, NOW
    )
    assert result["phase"] == "Failed"
    assert conditions(result)["Stalled"]["reason"] == "InvalidSpec"
    assert conditions(result)["Stalled"]["message"] == "spec.replicas: bad"


def test_suspended_is_scaled_to_zero_and_says_so() -> None:
    spec = api.parse_spec({"model": {"uri": "file:///m"}, "suspend": True})
    result, _ = status.compute_status(
        observe(deployment(replicas=0, ready=0, updated=0, available=0, desired=0), spec), None, NOW
    )
    assert result["phase"] == "Suspended"
    assert conditions(result)["Ready"] == {
        **conditions(result)["Ready"],
        "status": "False",
        "reason": "Suspended",
    }
    assert conditions(result)["Reconciling"]["status"] == "False"


def test_lost_replica_after_ready_is_degraded() -> None:
    previous, _ = status.compute_status(observe(deployment()), None, NOW)
    result, transitions = status.compute_status(
        observe(deployment(ready=2, available=2)), previous, LATER
    )
    assert result["phase"] == "Degraded"
    assert conditions(result)["Ready"]["lastTransitionTime"] == LATER
    assert any(t.type == "Ready" and t.status == "False" and t.warning for t in transitions)


def test_last_transition_time_moves_only_with_status_and_nothing_changes_when_nothing_changed() -> (
    None
):
    first, _ = status.compute_status(observe(deployment()), None, NOW)
    second, transitions = status.compute_status(observe(deployment()), first, LATER)
    assert second == first
    assert transitions == []
    assert not status.status_differs(first, second)
    assert all(c["lastTransitionTime"] == NOW for c in second["conditions"])


def test_served_model_stays_the_old_one_until_the_rollout_completes() -> None:
    ready, _ = status.compute_status(observe(deployment()), None, NOW)
    new_spec = api.parse_spec(
        {"model": {"uri": "file:///m2.joblib", "version": "8"}, "replicas": 3}
    )
    rolling, _ = status.compute_status(
        observe(deployment(updated=1, current=4), new_spec), ready, LATER
    )
    assert rolling["model"] == {"uri": "file:///m.joblib", "version": "7"}
    done, _ = status.compute_status(observe(deployment(), new_spec), rolling, LATER)
    assert done["model"] == {"uri": "file:///m2.joblib", "version": "8"}


def test_a_refused_child_is_never_reported_ready() -> None:
    refused = status.ApplyFailure(
        permanent=False, message="failed to allocate a serviceIP: range is full"
    )
    obs = status.Observed(
        generation=4,
        spec=SPEC,
        spec_error=None,
        deployment=deployment(),
        pod_failure=None,
        selector="s",
        url="u",
        apply_failure=refused,
    )
    result, _ = status.compute_status(obs, None, NOW)
    cond = conditions(result)
    assert cond["Ready"]["status"] == "False"
    assert cond["Ready"]["reason"] == "ApplyFailed"
    assert "range is full" in cond["Ready"]["message"]
    assert cond["Reconciling"]["status"] == "True"
    assert result["phase"] == "Degraded", "the Deployment still serves"
    forbidden = status.ApplyFailure(permanent=True, message="forbidden")
    result, _ = status.compute_status(
        status.Observed(4, SPEC, None, None, None, "s", "u", apply_failure=forbidden), None, NOW
    )
    assert conditions(result)["Stalled"]["status"] == "True"
    assert result["phase"] == "Failed"


def test_a_name_conflict_is_stalled_with_its_own_reason_and_message() -> None:
    conflict = status.ApplyFailure(
        permanent=True, message="a Service named m already exists", reason="NameConflict"
    )
    result, transitions = status.compute_status(
        status.Observed(2, SPEC, None, None, None, "s", "u", apply_failure=conflict), None, NOW
    )
    cond = conditions(result)
    for type_ in ("Ready", "Stalled"):
        assert cond[type_]["reason"] == "NameConflict"
        assert cond[type_]["message"] == "a Service named m already exists"
    assert cond["Stalled"]["status"] == "True"
    assert result["phase"] == "Failed"
    assert any(t.type == "Stalled" and t.warning for t in transitions)


PINNED = api.parse_spec(
    {"model": {"uri": "file:///m.joblib", "digest": "sha256:" + "a" * 64}, "replicas": 3}
)
SECRET = api.parse_spec(
    {
        "model": {
            "uri": "https://alice:S3cr3tPass@models.example/m.joblib?X-Amz-Signature=abc123",
            "format": "skops",
        },
        "replicas": 3,
    }
)


def test_model_verified_follows_the_pinned_digest() -> None:
    unpinned, _ = status.compute_status(observe(deployment()), None, NOW)
    assert conditions(unpinned)["ModelVerified"]["status"] == "False"
    assert conditions(unpinned)["ModelVerified"]["reason"] == "DigestNotPinned"

    verified, _ = status.compute_status(observe(deployment(), spec=PINNED), None, NOW)
    assert conditions(verified)["ModelVerified"]["status"] == "True"
    assert conditions(verified)["ModelVerified"]["reason"] == "DigestVerified"

    mismatch = status.PodFailure(
        reason=api.Reason.MODEL_LOAD_FAILED,
        message="pod p container server: digest mismatch for /m: expected sha256:aa, got sha256:bb",
    )
    rolling = deployment(updated=1, available=3, current=4)
    failed, transitions = status.compute_status(
        observe(rolling, spec=PINNED, pod_failure=mismatch), verified, LATER
    )
    cond = conditions(failed)["ModelVerified"]
    assert (cond["status"], cond["reason"]) == ("False", "DigestMismatch")
    assert "digest mismatch" in cond["message"]
    assert any(t.type == "ModelVerified" and t.warning for t in transitions)


def test_no_secret_of_the_uri_reaches_status_or_events() -> None:
    result, transitions = status.compute_status(observe(deployment(), spec=SECRET), None, NOW)
    text = repr(result) + repr(transitions)
    assert "S3cr3tPass" not in text
    assert "abc123" not in text
    assert result["model"]["uri"] == ("https://***@models.example/m.joblib?X-Amz-Signature=***")
    assert "https://***@models.example/m.joblib" in conditions(result)["Ready"]["message"]
    # An old status written before redaction existed is redacted on the next write.
    old = {**result, "model": {"uri": SECRET.model.uri}}
    rolling = deployment(updated=1, available=3, current=4)
    again, _ = status.compute_status(observe(rolling, spec=SECRET), old, LATER)
    assert "S3cr3tPass" not in repr(again)


def _every_scenario() -> list[dict[str, Any]]:
    """Observed states that between them produce every reason the code can write."""
    stuck = [
        status.summarize_pod_failure(
            [
                {
                    "metadata": {"name": f"p{i}"},
                    "status": {
                        "containerStatuses": [
                            {"name": container, "state": {"waiting": {"reason": waiting}}}
                        ]
                    },
                }
            ]
        )
        for i, (container, waiting) in enumerate(
            [
                ("server", "CrashLoopBackOff"),
                ("fetch-model", "CrashLoopBackOff"),
                ("sidecar", "CrashLoopBackOff"),
                ("server", "ImagePullBackOff"),
                ("server", "CreateContainerConfigError"),
            ]
        )
    ]
    failures = [f for f in stuck if f is not None]
    rolling = deployment(updated=1, available=3, current=4)
    deadline = {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}
    replica_failure = deployment(updated=1, available=2, current=3)
    replica_failure["status"]["conditions"].append(
        {"type": "ReplicaFailure", "status": "True", "message": "quota"}
    )
    suspended = api.parse_spec({"model": {"uri": "file:///m"}, "suspend": True})
    zero = api.parse_spec({"model": {"uri": "file:///m"}, "replicas": 0})
    observed = [
        observe(deployment()),
        observe(deployment(), spec=PINNED),
        observe(None),
        observe(deployment(observed=1)),
        observe(rolling),
        observe(rolling, spec=PINNED),
        observe(deployment(available=2)),
        observe(deployment(available=0, ready=0)),
        observe(deployment(desired=0, current=0, ready=0, updated=0, available=0), spec=suspended),
        observe(deployment(desired=0, current=0, ready=0, updated=0, available=0), spec=zero),
        observe(deployment(desired=0, current=2, updated=0, available=2), spec=zero),
        observe(deployment(progressing=deadline, updated=1, available=2)),
        observe(replica_failure),
        observe(None, spec=None, spec_error="spec.model: Field required"),
        *(observe(rolling, pod_failure=failure) for failure in failures),
        observe(
            rolling,
            spec=PINNED,
            pod_failure=status.PodFailure(api.Reason.MODEL_LOAD_FAILED, "digest mismatch for m"),
        ),
        observe(
            deployment(),
            canary=status.CanaryView(None, ("False", api.Reason.CANARY_PROGRESSING, "step 1/2")),
        ),
        observe(
            deployment(),
            canary=status.CanaryView(
                None, ("False", api.Reason.CANARY_ROLLED_BACK, "error rate"), stalled=True
            ),
        ),
        *(
            observe(deployment(), drift=drift)
            for drift in (
                ("True", api.Reason.DRIFT_DETECTED, "PSI above 0.2 for 300 s: feature age (0.4)"),
                ("False", api.Reason.NO_DRIFT, "no feature or prediction PSI above 0.2"),
            )
        ),
    ]
    refused = [
        status.ApplyFailure(permanent=True, message="quota"),
        status.ApplyFailure(permanent=True, message="taken", reason=api.Reason.NAME_CONFLICT),
    ]
    results = [status.compute_status(o, None, NOW)[0] for o in observed]
    for failure in refused:
        o = status.Observed(4, SPEC, None, None, None, "s", "u", apply_failure=failure)
        results.append(status.compute_status(o, None, NOW)[0])
    return results


def test_the_crd_documents_exactly_the_conditions_and_reasons_the_code_writes() -> None:
    from modeldeploy import crdgen  # noqa: PLC0415 - only this test needs the generator

    results = _every_scenario()
    produced_reasons = {c["reason"] for r in results for c in r["conditions"]}
    produced_types = {c["type"] for r in results for c in r["conditions"]}
    assert produced_reasons == {str(reason) for reason in api.Reason}
    assert produced_types == {str(type_) for type_ in api.ConditionType}
    schema = crdgen.render_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    condition = schema["properties"]["status"]["properties"]["conditions"]["items"]["properties"]
    documented_reasons = condition["reason"]["description"].split(": ", 1)[1].rstrip(".")
    documented_types = condition["type"]["description"].split(": ", 1)[1].rstrip(".")
    assert set(documented_reasons.split(", ")) == produced_reasons
    assert set(documented_types.split(", ")) == produced_types
    phases = {r["phase"] for r in results}
    assert phases == {str(phase) for phase in api.Phase}


def _fetch_pod(state: dict[str, Any], restarts: int = 1) -> dict[str, Any]:
    """A pod whose model download failed (404), as the kubelet reports it between two tries."""
    return {
        "metadata": {"name": "iris-canary-x"},
        "status": {
            "initContainerStatuses": [
                {
                    "name": "fetch-model",
                    "restartCount": restarts,
                    "state": state,
                    "lastState": {
                        "terminated": {"exitCode": 1, "message": "fetch failed: HTTP 404\n"}
                    }
                    if restarts
                    else {},
                }
            ],
            "containerStatuses": [
                {"name": "server", "state": {"waiting": {"reason": "PodInitializing"}}}
            ],
        },
    }


@pytest.mark.parametrize(
    "state",
    [
        # Retrying after a failure: the kubelet shows the new try as running.
        {"running": {"startedAt": "2026-11-28T08:00:00Z"}},
        # Just failed, before the kubelet's back-off starts.
        {"terminated": {"exitCode": 1, "message": "fetch failed: HTTP 404\n"}},
    ],
    ids=["retrying", "just-failed"],
)
def test_a_failing_model_download_is_seen_between_back_offs(state: dict[str, Any]) -> None:
    failure = status.summarize_pod_failure([_fetch_pod(state)])
    assert failure == status.PodFailure(
        reason=api.Reason.MODEL_FETCH_FAILED,
        message="pod iris-canary-x container fetch-model: fetch failed: HTTP 404",
    )


def test_a_first_download_still_running_is_no_failure() -> None:
    running = {"running": {"startedAt": "2026-11-28T08:00:00Z"}}
    assert status.summarize_pod_failure([_fetch_pod(running, restarts=0)]) is None
    # A server container that restarted once and runs again is not stuck either.
    recovered = {
        "metadata": {"name": "p"},
        "status": {
            "containerStatuses": [
                {
                    "name": "server",
                    "restartCount": 1,
                    "state": {"running": {}},
                    "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}},
                }
            ]
        },
    }
    assert status.summarize_pod_failure([recovered]) is None
