"""The ModelDrift condition, decided from the pods' PSI figures (pure: no I/O, no clock of its own).

The servers export `modelserver_feature_psi{feature}` and `modelserver_prediction_psi` against the
reference profile (see the server's drift.py); `scrape.drift_figures` reads them, the worst pod's
figure counting. ModelDrift turns True once some figure has stayed above `driftThreshold` for
`driftWindowSeconds` (the period the servers' window covers too), and False once every figure has
stayed at or under it as long. The condition's
message is written on the transition and kept until the next one, so that the status (and the
Event the transition makes) changes only when the verdict does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from modeldeploy import api

CHECK_SECONDS = 60.0  # how often a resource with a reference profile is looked at, at most
# A pass that comes this much early still looks (the work queue's jitter and a slow pass).
EARLY_SECONDS = 1.0
PREDICTION = "predictions"
FEATURE = "feature "

Wanted = tuple[str, api.Reason, str]


@dataclass(frozen=True)
class Verdict:
    """The condition to write and, while the figures disagree with it, since when."""

    condition: Wanted
    pending_since: float | None


def check_seconds(sustain: float) -> float:
    """How often to look: every minute, or five times per sustain period when that is shorter
    (a verdict then comes at most a fifth of the period late)."""
    return min(CHECK_SECONDS, max(2.0, sustain / 5))


def due_in(checked_at: float | None, *, now: float, sustain: float) -> float:
    """Seconds until the pods' figures are due for a look again (0: now), from when they were
    last read. Child events do not bring it forward: the pods are read at the check's own
    interval, not once per pass."""
    if checked_at is None:
        return 0.0
    left = checked_at + check_seconds(sustain) - now
    return 0.0 if left <= EARLY_SECONDS else left


def above(figures: Mapping[str, float], threshold: float) -> list[str]:
    """What drifts, worst first: `feature <name> (PSI)` and `predictions (PSI)`."""
    worst = sorted(
        ((value, key) for key, value in figures.items() if value > threshold), reverse=True
    )
    return [f"{key} ({value:.2f})" for value, key in worst]


def decide(
    figures: Mapping[str, float] | None,
    threshold: float,
    previous: Wanted | None,
    pending_since: float | None,
    *,
    now: float,
    sustain: float,
) -> Verdict:
    """The ModelDrift condition after a look at the figures (None: no pod could be read)."""
    current = previous or (
        "False",
        api.Reason.NO_DRIFT,
        f"no feature or prediction PSI above {threshold}",
    )
    if figures is None:
        return Verdict(current, pending_since)
    drifting = above(figures, threshold)
    if bool(drifting) == (current[0] == "True"):
        return Verdict(current, None)
    since = now if pending_since is None else pending_since
    if now - since < sustain:
        return Verdict(current, since)
    if drifting:
        message = f"PSI above {threshold} for {sustain:.0f} s: {', '.join(drifting[:10])}" + (
            f" and {len(drifting) - 10} more" if len(drifting) > 10 else ""
        )
        return Verdict(("True", api.Reason.DRIFT_DETECTED, message), None)
    message = f"every feature and prediction PSI back at or under {threshold} for {sustain:.0f} s"
    return Verdict(("False", api.Reason.NO_DRIFT, message), None)
