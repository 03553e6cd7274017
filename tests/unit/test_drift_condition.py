"""ModelDrift: decided from the pods' PSI figures, sustained before it flips, written (with an
Event naming the features) only on transitions."""

from __future__ import annotations

from modeldeploy import api, drift, scrape, status

from .test_status import deployment, observe

WINDOW = api.Monitoring().drift_window_seconds  # the default: 300 s

METRICS = """\
# HELP modelserver_feature_psi PSI
# TYPE modelserver_feature_psi gauge
modelserver_feature_psi{feature="age",model="m",version=""} 0.41
modelserver_feature_psi{feature="income",model="m",version=""} 0.05
modelserver_feature_psi{feature="zip \\"code\\"",model="m",version=""} 0.3
modelserver_prediction_psi{model="m",version=""} 0.02
modelserver_predictions_total{class="0",model="m",version=""} 12.0
"""


def test_pod_figures_are_read_by_feature_and_the_worst_pod_counts() -> None:
    figures = scrape.drift_figures(METRICS)
    assert figures == {
        "feature age": 0.41,
        "feature income": 0.05,
        'feature zip "code"': 0.3,
        "predictions": 0.02,
    }
    other = {"feature age": 0.1, "feature income": 0.6}
    assert scrape.worst([figures, other])["feature income"] == 0.6
    assert scrape.worst([figures, other])["feature age"] == 0.41


def test_drift_turns_true_only_after_it_is_sustained_naming_the_features_worst_first() -> None:
    figures = {"feature age": 0.41, "feature income": 0.05, "feature zip": 0.3, "predictions": 0.02}
    first = drift.decide(figures, 0.2, None, None, now=1000.0, sustain=WINDOW)
    assert first.condition[0] == "False"
    assert first.pending_since == 1000.0

    still = drift.decide(
        figures, 0.2, first.condition, first.pending_since, now=1299.0, sustain=WINDOW
    )
    assert still.condition == first.condition
    assert still.pending_since == 1000.0

    flipped = drift.decide(
        figures, 0.2, still.condition, still.pending_since, now=1300.0, sustain=WINDOW
    )
    state, reason, message = flipped.condition
    assert (state, reason) == ("True", api.Reason.DRIFT_DETECTED)
    assert message == "PSI above 0.2 for 300 s: feature age (0.41), feature zip (0.30)"
    assert flipped.pending_since is None

    # While it drifts, other figures do not rewrite the message (no status write, no Event).
    more = {**figures, "predictions": 0.9}
    assert drift.decide(
        more, 0.2, flipped.condition, None, now=1400.0, sustain=WINDOW
    ).condition == (flipped.condition)


def test_a_short_spike_or_dip_resets_the_clock() -> None:
    spike = {"feature age": 0.5}
    calm = {"feature age": 0.01}
    pending = drift.decide(spike, 0.2, None, None, now=0.0, sustain=WINDOW)
    reset = drift.decide(
        calm, 0.2, pending.condition, pending.pending_since, now=200.0, sustain=WINDOW
    )
    assert reset.pending_since is None
    again = drift.decide(
        spike, 0.2, reset.condition, reset.pending_since, now=250.0, sustain=WINDOW
    )
    assert (
        drift.decide(
            spike, 0.2, again.condition, again.pending_since, now=500.0, sustain=WINDOW
        ).condition[0]
        == "False"
    )  # 250 s above, not 300
    assert (
        drift.decide(
            spike, 0.2, again.condition, again.pending_since, now=550.0, sustain=WINDOW
        ).condition[0]
        == "True"
    )


def test_drift_comes_back_to_false_once_every_figure_is_under_the_threshold_long_enough() -> None:
    drifting = ("True", api.Reason.DRIFT_DETECTED, "PSI above 0.2 for 300 s: feature age (0.50)")
    calm = {"feature age": 0.05, "predictions": 0.01}
    pending = drift.decide(calm, 0.2, drifting, None, now=0.0, sustain=WINDOW)
    assert pending.condition == drifting
    back = drift.decide(
        calm, 0.2, pending.condition, pending.pending_since, now=300.0, sustain=WINDOW
    )
    assert back.condition[:2] == ("False", api.Reason.NO_DRIFT)


def test_a_shorter_window_is_sustained_for_less_and_looked_at_more_often() -> None:
    spike = {"feature age": 0.9}
    pending = drift.decide(spike, 0.2, None, None, now=0.0, sustain=20)
    assert (
        drift.decide(spike, 0.2, None, pending.pending_since, now=19.0, sustain=20).condition[0]
        == "False"
    )
    flipped = drift.decide(spike, 0.2, None, pending.pending_since, now=20.0, sustain=20)
    assert flipped.condition[0] == "True"
    assert "for 20 s" in flipped.condition[2]
    assert drift.check_seconds(20) == 4.0
    assert drift.check_seconds(300) == 60.0  # the default window: once a minute
    assert drift.check_seconds(5) == 2.0


def test_unreadable_pods_change_nothing() -> None:
    drifting = ("True", api.Reason.DRIFT_DETECTED, "m")
    assert drift.decide(None, 0.2, drifting, 5.0, now=1e6, sustain=WINDOW) == drift.Verdict(
        drifting, 5.0
    )


def test_the_condition_and_its_event_appear_only_on_transitions() -> None:
    calm = ("False", api.Reason.NO_DRIFT, "no feature or prediction PSI above 0.2")
    first, transitions = status.compute_status(observe(deployment(), drift=calm), None, "T1")
    assert status_of(first) == "False"
    assert transitions_of(transitions) == []  # starting False is not news

    same, transitions = status.compute_status(observe(deployment(), drift=calm), first, "T2")
    assert not status.status_differs(first, same)
    assert transitions_of(transitions) == []

    drifting = ("True", api.Reason.DRIFT_DETECTED, "PSI above 0.2 for 300 s: feature age (0.41)")
    flipped, transitions = status.compute_status(observe(deployment(), drift=drifting), same, "T3")
    assert status_of(flipped) == "True"
    assert transitions_of(transitions) == [("True", "PSI above 0.2 for 300 s: feature age (0.41)")]
    condition = next(c for c in flipped["conditions"] if c["type"] == "ModelDrift")
    assert condition["lastTransitionTime"] == "T3"
    assert condition["reason"] == "DriftDetected"


def test_without_a_reference_there_is_no_model_drift_condition() -> None:
    result, _ = status.compute_status(observe(deployment()), None, "T1")
    assert "ModelDrift" not in {c["type"] for c in result["conditions"]}


def status_of(result: dict[str, object]) -> str:
    conditions = result["conditions"]
    assert isinstance(conditions, list)
    return str(next(c for c in conditions if c["type"] == "ModelDrift")["status"])


def transitions_of(transitions: list[status.Transition]) -> list[tuple[str, str]]:
    return [(t.status, t.message) for t in transitions if t.type == api.ConditionType.MODEL_DRIFT]


def test_the_pods_are_read_at_the_checks_own_interval_not_per_pass() -> None:
    every = drift.check_seconds(WINDOW)
    assert drift.due_in(None, now=50.0, sustain=WINDOW) == 0.0  # never read (or restarted)
    assert drift.due_in(100.0, now=110.0, sustain=WINDOW) == every - 10.0
    assert drift.due_in(100.0, now=100.0 + every - drift.EARLY_SECONDS, sustain=WINDOW) == 0.0
    assert drift.due_in(100.0, now=100.0 + every + 5, sustain=WINDOW) == 0.0


def test_a_pending_change_is_kept_in_status_and_only_while_pending() -> None:
    pending = api.DriftStatus(pending_since="2026-01-01T00:00:00Z")
    drifting = ("True", api.Reason.DRIFT_DETECTED, "PSI above 0.2")
    written, _ = status.compute_status(
        observe(deployment(), drift=drifting, drift_clock=pending), None, "2026-01-01T00:01:00Z"
    )
    assert written["drift"] == {"pendingSince": "2026-01-01T00:00:00Z"}
    settled, _ = status.compute_status(observe(deployment(), drift=drifting), written, "t")
    assert "drift" not in settled
    assert status.status_differs(written, settled), "clearing the pending change is a write"
