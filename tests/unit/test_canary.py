"""The canary's pure parts: counters from metrics text, the gates' arithmetic, step sizes, and
the state machine driven through a whole canary from the objects a pass would see."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from modeldeploy import api, canary, scrape

T0 = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)
HASH_NEW, HASH_OLD = "new0000000000000", "old0000000000000"

METRICS = """\
# HELP modelserver_requests_total Inference requests answered
# TYPE modelserver_requests_total counter
modelserver_requests_total{model="iris",protocol="v1",status="200"} 90.0
modelserver_requests_total{model="iris",protocol="v2",status="200"} 5.0
modelserver_requests_total{model="iris",protocol="v1",status="500"} 4.0
modelserver_requests_total{model="iris",protocol="v1",status="400"} 1.0
modelserver_request_duration_seconds_bucket{le="0.005",model="iris",protocol="v1"} 50.0
modelserver_request_duration_seconds_bucket{le="0.01",model="iris",protocol="v1"} 90.0
modelserver_request_duration_seconds_bucket{le="+Inf",model="iris",protocol="v1"} 100.0
modelserver_predictions_total{class="setosa",model="iris",version="v1"} 30.0
modelserver_predictions_total{class="a \\"quoted\\" class",model="iris",version="v1"} 2.0
other_metric_total 7.0
"""


def test_counters_sum_the_series_the_analysis_reads() -> None:
    found = scrape.counters(METRICS)
    assert found == {
        "requests": 100.0,
        "errors": 4.0,
        "latency:0.005": 50.0,
        "latency:0.01": 90.0,
        "latency:+Inf": 100.0,
        "class:setosa": 30.0,
        'class:a "quoted" class': 2.0,
    }


def test_counters_since_a_reading_restart_from_zero_when_a_pod_restarted() -> None:
    assert scrape.since({"requests": 10.0, "errors": 3.0}, {"requests": 4.0, "errors": 5.0}) == {
        "requests": 6.0,
        "errors": 3.0,  # went down: the pod restarted, all of it is new
    }
    assert scrape.total([{"requests": 1.0}, {"requests": 2.0, "errors": 1.0}]) == {
        "requests": 3.0,
        "errors": 1.0,
    }


def test_quantile_interpolates_like_prometheus() -> None:
    buckets = {0.005: 50.0, 0.01: 90.0, math.inf: 100.0}
    assert canary.quantile(0.5, buckets) == pytest.approx(0.005)
    assert canary.quantile(0.7, buckets) == pytest.approx(0.0075)
    assert canary.quantile(0.99, buckets) == pytest.approx(0.01)  # in +Inf: the last bound
    assert canary.quantile(0.99, {math.inf: 0.0}) is None


def test_psi_is_zero_for_equal_distributions_and_large_for_a_constant_class() -> None:
    even = {"class:0": 100.0, "class:1": 100.0, "class:2": 100.0}
    assert canary.psi(even, {"class:0": 10.0, "class:1": 10.0, "class:2": 10.0}) == pytest.approx(
        0.0
    )
    constant = canary.psi(even, {"class:0": 50.0})
    # (1 - 1/3) ln(3) + 2 (1e-4 - 1/3) ln(3e-4): the canary never predicts two of the classes.
    expected = (1 - 1 / 3) * math.log(3) + 2 * (1e-4 - 1 / 3) * math.log(1e-4 * 3)
    assert constant == pytest.approx(expected)
    assert constant > 5
    assert canary.psi({}, even) is None


def _counters(
    requests: float, errors: float = 0, p99_bucket: str = "0.005", **classes: float
) -> dict[str, float]:
    out = {
        "requests": requests,
        "errors": errors,
        f"latency:{p99_bucket}": requests,
        "latency:+Inf": requests,
    }
    out.update({f"class:{k}": v for k, v in classes.items()})
    return out


GATES = api.CanaryAnalysis(
    min_requests=20, max_error_rate=0.05, max_latency_ratio=2.0, max_prediction_shift=0.2
)


def test_judge_waits_for_min_requests() -> None:
    result = canary.judge(GATES, _counters(100, a=50, b=50), _counters(19, a=19))
    assert result.verdict == "Inconclusive"
    assert "fewer than minRequests 20" in result.message


def test_judge_passes_a_like_canary_and_names_each_failed_gate() -> None:
    good = canary.judge(GATES, _counters(100, a=50, b=50), _counters(40, a=21, b=19))
    assert good.verdict == "Passed"
    assert good.prediction_shift is not None
    assert good.prediction_shift < 0.01
    assert good.canary.error_rate == 0

    errors = canary.judge(GATES, _counters(100, a=50, b=50), _counters(40, errors=10, a=15, b=15))
    assert errors.verdict == "Failed"
    assert "error rate 0.25 > maxErrorRate 0.05" in errors.message

    shifted = canary.judge(GATES, _counters(100, a=50, b=50), _counters(40, a=40))
    assert shifted.verdict == "Failed"
    assert "prediction shift" in shifted.message
    assert "maxPredictionShift 0.2" in shifted.message

    slow = canary.judge(
        GATES,
        _counters(100, p99_bucket="0.01", a=50, b=50),
        _counters(40, p99_bucket="0.05", a=20, b=20),
    )
    assert slow.verdict == "Failed"
    assert "latency ratio 4.95 > maxLatencyRatio 2" in slow.message  # 0.0495 / 0.01 (floor)


def test_latencies_under_the_floor_are_not_judged_against_each_other() -> None:
    # 1 ms against 5 ms is scheduler noise, not a model five times slower.
    result = canary.judge(
        GATES,
        _counters(100, p99_bucket="0.001", a=50, b=50),
        _counters(40, p99_bucket="0.005", a=20, b=20),
    )
    assert result.verdict == "Passed"
    assert result.latency_ratio == 1.0


def test_judge_regressors_by_their_prediction_histogram() -> None:
    stable = {"requests": 100.0, "value:1.0": 50.0, "value:2.0": 100.0, "value:+Inf": 100.0}
    same = {"requests": 50.0, "value:1.0": 26.0, "value:2.0": 50.0, "value:+Inf": 50.0}
    moved = {"requests": 50.0, "value:1.0": 0.0, "value:2.0": 5.0, "value:+Inf": 50.0}
    assert canary.judge(GATES, stable, same).verdict == "Passed"
    assert canary.judge(GATES, stable, moved).verdict == "Failed"


@pytest.mark.parametrize(
    ("weight", "replicas", "autoscaled", "expected"),
    [
        (25, 4, False, (3, 1)),
        (50, 4, False, (2, 2)),
        (10, 4, False, (3, 1)),  # at least one canary pod
        (50, 1, False, (1, 1)),  # and at least one stable pod
        (90, 2, False, (1, 2)),  # rounds to 2 canary pods: the stable version keeps one
        (25, 3, True, (3, 1)),  # autoscaled: the stable pods stay, the canary is added
        (50, 3, True, (3, 3)),
        (75, 2, True, (2, 6)),
    ],
)
def test_plan(weight: int, replicas: int, autoscaled: bool, expected: tuple[int, int]) -> None:
    assert canary.plan(weight, replicas, autoscaled=autoscaled) == expected


# --- the state machine ----------------------------------------------------------------------


def _spec(**rollout: Any) -> api.ModelDeploymentSpec:
    return api.parse_spec(
        {
            "model": {"uri": "file:///models/v2.joblib", "version": "v2"},
            "replicas": 4,
            "rollout": {
                "strategy": "Canary",
                "progressDeadlineSeconds": 120,
                "canary": {
                    "steps": [
                        {"weight": 25, "pauseSeconds": 30},
                        {"weight": 50, "pauseSeconds": 30},
                    ],
                    "analysis": {"intervalSeconds": 10, "minRequests": 20, "failureLimit": 1},
                },
                **rollout,
            },
        }
    )


def _deployment(
    template_hash: str, replicas: int, *, ready: int | None = None, current: int | None = None
) -> dict[str, Any]:
    ready = replicas if ready is None else ready
    return {
        "metadata": {
            "generation": 2,
            "annotations": {canary.TEMPLATE_HASH_ANNOTATION: template_hash},
        },
        "spec": {"replicas": replicas},
        "status": {
            "observedGeneration": 2,
            "replicas": replicas if current is None else current,
            "updatedReplicas": replicas,
            "readyReplicas": ready,
            "availableReplicas": ready,
        },
    }


class Run:
    """Drives ``decide`` as passes would: the live Deployments follow the moves at once."""

    def __init__(self, spec: api.ModelDeploymentSpec) -> None:
        self.spec = spec
        self.now = T0
        self.stable: dict[str, Any] = _deployment(HASH_OLD, 4)
        self.canary: dict[str, Any] | None = None
        self.status: api.CanaryStatus | None = None
        self.events: list[canary.Event] = []
        self.command: str | None = None

    def world(self) -> canary.World:
        return canary.World(
            spec=self.spec,
            template_hash=HASH_NEW,
            stable=self.stable,
            canary=self.canary,
            previous=self.status,
            command=self.command,
            now=self.now,
        )

    def step(
        self, readings: dict[str, dict[str, float]] | None = None, *, canary_ready: bool = True
    ) -> canary.Move:
        if canary_ready and self.canary is not None:  # its pods became Ready meanwhile
            self.canary = _deployment(HASH_NEW, self.canary["spec"]["replicas"])
        move = canary.decide(self.world())
        if move.needs_readings:
            assert readings is not None, "the move asked for readings"
            move = canary.decide(self.world(), readings)
        self.status = move.status
        self.events += move.events
        if move.canary_replicas is not None:
            self.canary = _deployment(
                HASH_NEW, move.canary_replicas, ready=move.canary_replicas if canary_ready else 0
            )
        elif move.delete_canary:
            self.canary = None
        if move.stable_replicas is not None:
            self.stable = _deployment(self.stable_hash, move.stable_replicas)
        if move.apply_stable:
            self.stable = _deployment(HASH_NEW, 4)
        return move

    @property
    def stable_hash(self) -> str:
        return str(self.stable["metadata"]["annotations"][canary.TEMPLATE_HASH_ANNOTATION])

    def later(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def _readings(
    stable: float, canary_: float, canary_class: str | None = None
) -> dict[str, dict[str, float]]:
    classes_c = {canary_class: canary_} if canary_class else {"a": canary_ / 2, "b": canary_ / 2}
    return {
        "stable": _counters(stable, a=stable / 2, b=stable / 2),
        "canary": _counters(canary_, **classes_c),
    }


def test_a_good_canary_goes_through_every_step_and_is_promoted() -> None:
    run = Run(_spec())
    move = run.step(canary_ready=False)  # the spec changed: step 1 asks for 1 canary pod
    assert move.canary_replicas == 1
    assert not move.apply_stable
    assert move.stable_replicas is None  # full capacity until the canary pod is Ready
    assert run.status is not None
    assert (run.status.state, run.status.step, run.status.steps) == ("Progressing", 1, 2)
    assert move.conditions is not None
    assert move.conditions[1] == api.Reason.CANARY_PROGRESSING
    assert [e.reason for e in run.events] == ["CanaryStarted"]

    run.later(5)
    move = run.step()  # the canary pod is Ready: the stable version gives one pod up
    assert move.stable_replicas == 3
    assert run.status.split_at is None

    run.later(1)
    move = run.step(_readings(100, 0))  # split reached: the counters at its start
    assert run.status.split_at is not None
    assert run.status.baseline == _readings(100, 0)
    assert run.status.weight == 25  # measured from the Deployments' ready pods: 1 of 4
    assert "CanaryStep" in [e.reason for e in run.events]

    run.later(10)
    move = run.step(_readings(190, 30))  # one interval: the canary answered 30 like the stable
    assert run.status.analysis is not None
    assert run.status.analysis.verdict == "Passed"
    assert run.status.passed == 1
    assert run.status.step == 1  # holds for pauseSeconds (30) from the split

    run.later(10)
    run.step(_readings(280, 60))
    run.later(10)
    move = run.step(_readings(370, 90))  # 30 s held: step 2 asks for 2 canary pods
    assert run.status.step == 2
    assert move.canary_replicas == 2
    assert move.stable_replicas is None  # the stable keeps 3 until both canary pods are Ready
    assert "CanaryStepPassed" in [e.reason for e in run.events]

    run.later(5)
    move = run.step()
    assert move.stable_replicas == 2
    run.later(1)
    run.step(_readings(400, 100))
    assert run.status.weight == 50
    for total in range(1, 4):
        run.later(10)
        move = run.step(_readings(400 + 60 * total, 100 + 60 * total))
    assert run.status.state == "Promoted"
    assert move.apply_stable  # the stable Deployment takes the new template
    assert move.keep_canary  # and the canary serves until that rollout is done
    assert run.stable_hash == HASH_NEW
    assert "CanaryPromoted" in [e.reason for e in run.events]

    run.stable = _deployment(HASH_NEW, 4, current=5)  # rolling out
    assert run.step().keep_canary
    run.stable = _deployment(HASH_NEW, 4)
    move = run.step()
    assert move.delete_canary
    assert run.status is not None
    assert run.status.state == "Promoted"


def test_a_canary_predicting_one_class_is_rolled_back_after_failure_limit_intervals() -> None:
    run = Run(_spec())
    run.step()
    run.later(1)
    run.step()
    run.step(_readings(100, 0))
    run.later(10)
    run.step(_readings(200, 25, canary_class="a"))
    assert run.status is not None
    assert run.status.analysis is not None
    assert run.status.analysis.verdict == "Failed"
    assert run.status.state == "Progressing"  # failureLimit 1: one failed interval is tolerated
    run.later(10)
    move = run.step(_readings(300, 50, canary_class="a"))
    assert run.status.state == "RolledBack"
    assert move.delete_canary
    assert move.stable_replicas == 4  # back to full size
    assert move.stalled
    assert move.conditions is not None
    assert move.conditions[1] == api.Reason.CANARY_ROLLED_BACK
    assert "prediction shift" in move.conditions[2]
    assert "2 failed intervals" in move.conditions[2]
    # The same spec stays rolled back (no second canary) until the spec changes.
    run.later(60)
    again = run.step()
    assert again.delete_canary
    assert not again.apply_stable
    assert run.status.state == "RolledBack"


def test_traffic_below_min_requests_pauses_without_a_verdict() -> None:
    run = Run(_spec())
    run.step()
    run.step()
    run.step(_readings(100, 0))
    run.later(10)
    run.step(_readings(110, 5))
    assert run.status is not None
    assert run.status.state == "Paused"
    assert run.status.analysis is not None
    assert run.status.analysis.verdict == "Inconclusive"
    run.later(40)
    run.step(_readings(120, 10))  # held long enough, but never judged: no next step
    assert run.status.step == 1
    run.later(10)
    run.step(_readings(300, 30))  # 30 since the split's counters: judged now
    assert run.status.analysis.verdict == "Passed"
    assert run.status.analysis.canary is not None
    assert run.status.analysis.canary.requests == 30


def test_a_canary_that_never_becomes_ready_is_rolled_back_at_the_deadline() -> None:
    run = Run(_spec())
    run.step(canary_ready=False)
    run.later(100)
    assert run.step(canary_ready=False).canary_replicas == 1
    run.later(30)
    move = run.step(canary_ready=False)
    assert run.status is not None
    assert run.status.state == "RolledBack"
    assert move.delete_canary
    assert move.conditions is not None
    assert "progress deadline" in move.conditions[2]


def test_a_stuck_canary_pod_says_why_while_waiting_and_in_the_rollback() -> None:
    run = Run(_spec())
    run.step(canary_ready=False)
    why = "ModelFetchFailed: pod iris-canary-x container fetch-model: HTTP 404"
    world = run.world()
    world = canary.World(**{**world.__dict__, "canary_pod_failure": why})
    waiting = canary.decide(world)
    assert waiting.conditions is not None
    assert why in waiting.conditions[2]
    world = canary.World(**{**world.__dict__, "now": T0 + timedelta(seconds=121)})
    rolled = canary.decide(world)
    assert rolled.status is not None
    assert rolled.status.state == "RolledBack"
    assert rolled.conditions is not None
    assert why in rolled.conditions[2]


def test_abort_and_promote_commands() -> None:
    run = Run(_spec())
    run.step()
    run.command = "abort"
    move = run.step()
    assert run.status is not None
    assert run.status.state == "RolledBack"
    assert move.clear_command
    assert "annotation" in (run.status.analysis.message if run.status.analysis else "")

    run = Run(_spec())
    run.step()
    run.command = "promote"
    move = run.step()
    assert run.status is not None
    assert run.status.state == "Promoted"
    assert move.apply_stable
    assert move.clear_command


def test_a_new_spec_during_a_canary_starts_over_and_a_resumed_pass_continues() -> None:
    run = Run(_spec())
    run.step()
    run.step()
    run.step(_readings(100, 0))
    assert run.status is not None
    # A restarted operator has nothing but the status: the same status resumes the same step.
    resumed = api.CanaryStatus.model_validate(
        run.status.model_dump(by_alias=True, exclude_none=True, mode="json")
    )
    assert resumed == run.status
    run.later(10)
    run.status = resumed
    run.step(_readings(190, 30))
    assert run.status.passed == 1
    # Now the spec changes again: a canary of the newer template starts from step 1.
    before = run.status.started_at
    move = canary.decide(
        canary.World(
            spec=run.spec,
            template_hash="newer00000000000",
            stable=run.stable,
            canary=run.canary,
            previous=run.status,
            command=None,
            now=run.now,
        )
    )
    assert move.status is not None
    assert (move.status.step, move.status.template_hash) == (1, "newer00000000000")
    assert move.status.started_at != before
    assert "starting over" in move.events[0].message


def test_rolling_update_strategy_and_first_creation_need_no_canary() -> None:
    plain = api.parse_spec({"model": {"uri": "file:///m"}, "replicas": 2})
    move = canary.decide(
        canary.World(plain, HASH_NEW, _deployment(HASH_OLD, 2), None, None, None, T0)
    )
    assert move.apply_stable
    assert move.delete_canary
    assert move.status is None
    created = canary.decide(canary.World(_spec(), HASH_NEW, None, None, None, None, T0))
    assert created.apply_stable
    assert created.status is None
