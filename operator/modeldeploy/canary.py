"""Canary rollouts, pure: the gates' arithmetic, step sizes, and the next move from what is seen.

A spec change of a ModelDeployment with ``rollout.strategy: Canary`` does not touch the stable
Deployment. The new pod template runs in ``<name>-canary`` behind the same Service, so its share of
the traffic is its share of the ready pods. Each step asks for ``weight`` percent of the pods; the
stable version keeps its full capacity until the canary's pods are Ready, and only then gives up
as many pods (with autoscaling the stable Deployment belongs to the HPA: the canary is added on
top instead). While a step holds, the analysis reads both versions' counters every interval and
judges the difference since the last verdict: error rate, p99 latency ratio and the shift of the
prediction distribution (PSI). Too many failed intervals, a canary that never becomes Ready, or
an ``abort`` roll back; the last step passed (or ``promote``) gives the stable Deployment the new
template with an ordinary rolling update, and the canary goes once that is done.

Everything the next move depends on is in ``status.canary`` (steps, times, counters at the start of
the interval), so a restarted operator or a new leader resumes where the last one was.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from modeldeploy import api, scrape

Obj = dict[str, Any]

TRACK_LABEL = "serving.modeldeploy.io/track"
COMMAND_ANNOTATION = "serving.modeldeploy.io/canary"
TEMPLATE_HASH_ANNOTATION = "serving.modeldeploy.io/template-hash"
STABLE, CANARY = "stable", "canary"
# p99 latencies below this count as this: a few milliseconds' difference between two pods is
# the scheduler's noise, not the model's.
LATENCY_FLOOR_SECONDS = 0.01
PSI_EPSILON = 1e-4  # the share given to a bin that one version never filled
WAIT_SECONDS = 3.0  # how soon to look again while pods start or leave
DEFAULT_DEADLINE_SECONDS = 600

State = Literal["Progressing", "Paused", "Promoted", "RolledBack"]
Verdict = Literal["Passed", "Failed", "Inconclusive"]


def canary_name(name: str) -> str:
    return f"{name}-canary"


def timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


# --- the gates -------------------------------------------------------------------------------


def quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """Prometheus' histogram_quantile over cumulative buckets {upper bound: count}."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower_bound, lower_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower_bound  # the highest finite bound, as Prometheus answers
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = bound, count
    return lower_bound


def _histogram(counters: Mapping[str, float], prefix: str) -> dict[float, float]:
    return {
        float(key[len(prefix) :]): value
        for key, value in counters.items()
        if key.startswith(prefix)
    }


def psi(expected: Mapping[str, float], actual: Mapping[str, float]) -> float | None:
    """Population stability index between two distributions given as counts per bin."""
    expected_total, actual_total = sum(expected.values()), sum(actual.values())
    if expected_total <= 0 or actual_total <= 0:
        return None
    index = 0.0
    for key in set(expected) | set(actual):
        e = max(expected.get(key, 0.0) / expected_total, PSI_EPSILON)
        a = max(actual.get(key, 0.0) / actual_total, PSI_EPSILON)
        index += (a - e) * math.log(a / e)
    return index


def _distribution(counters: Mapping[str, float]) -> dict[str, float]:
    """Predictions per class, or per bucket of predicted values (cumulative made per-bin)."""
    classes = {k: v for k, v in counters.items() if k.startswith(scrape.CLASS)}
    if classes:
        return classes
    values = sorted(_histogram(counters, scrape.VALUE).items())
    out, below = {}, 0.0
    for bound, cumulative in values:
        out[str(bound)] = max(cumulative - below, 0.0)
        below = cumulative
    return out


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    message: str
    stable: api.CanaryFigures
    canary: api.CanaryFigures
    latency_ratio: float | None
    prediction_shift: float | None


def _figures(counters: Mapping[str, float]) -> api.CanaryFigures:
    requests = counters.get(scrape.REQUESTS, 0.0)
    return api.CanaryFigures(
        requests=int(requests),
        error_rate=round(counters.get(scrape.ERRORS, 0.0) / requests, 4) if requests else None,
        latency_p99_seconds=quantile(0.99, _histogram(counters, scrape.LATENCY)),
    )


def judge(
    gates: api.CanaryAnalysis, stable: Mapping[str, float], canary: Mapping[str, float]
) -> Judgement:
    """The verdict on one interval: both versions' counters counted over the same time."""
    s, c = _figures(stable), _figures(canary)
    ratio = None
    if s.latency_p99_seconds is not None and c.latency_p99_seconds is not None:
        ratio = round(
            max(c.latency_p99_seconds, LATENCY_FLOOR_SECONDS)
            / max(s.latency_p99_seconds, LATENCY_FLOOR_SECONDS),
            3,
        )
    shift = psi(_distribution(stable), _distribution(canary))
    shift = None if shift is None else round(shift, 4)

    def done(verdict: Verdict, message: str) -> Judgement:
        return Judgement(verdict, message, s, c, ratio, shift)

    if (c.requests or 0) < gates.min_requests:
        return done(
            "Inconclusive",
            f"the canary answered {c.requests} requests, fewer than minRequests "
            f"{gates.min_requests}: no verdict yet",
        )
    failed = []
    if c.error_rate is not None and c.error_rate > gates.max_error_rate:
        failed.append(f"error rate {c.error_rate:g} > maxErrorRate {gates.max_error_rate:g}")
    if ratio is not None and ratio > gates.max_latency_ratio:
        failed.append(f"latency ratio {ratio:g} > maxLatencyRatio {gates.max_latency_ratio:g}")
    if shift is not None and shift > gates.max_prediction_shift:
        failed.append(
            f"prediction shift {shift:g} > maxPredictionShift {gates.max_prediction_shift:g}"
        )
    if failed:
        return done("Failed", "; ".join(failed))
    parts = [f"error rate {c.error_rate or 0:g}"]
    if ratio is not None:
        parts.append(f"latency ratio {ratio:g}")
    if shift is not None:
        parts.append(f"prediction shift {shift:g}")
    return done("Passed", f"{c.requests} canary requests: " + ", ".join(parts))


# --- step sizes ------------------------------------------------------------------------------


def plan(weight: int, replicas: int, *, autoscaled: bool) -> tuple[int, int]:
    """(stable, canary) pods for a step. ``replicas`` is the desired count, or the stable
    Deployment's current one under autoscaling, where the stable version keeps all of its pods
    and the canary is added so that it is ``weight`` percent of the whole. Each version keeps
    at least one pod, so small Deployments get the nearest share they can."""
    if autoscaled:
        return replicas, max(1, round(replicas * weight / (100 - weight)))
    canary = max(1, round(replicas * weight / 100))
    return max(1, replicas - canary), canary


def measured_weight(stable: Obj | None, canary: Obj | None) -> int:
    """Percent of the ready pods that run the canary."""
    s = int(((stable or {}).get("status") or {}).get("readyReplicas") or 0)
    c = int(((canary or {}).get("status") or {}).get("readyReplicas") or 0)
    return round(100 * c / (s + c)) if s + c else 0


def _ready(deployment: Obj | None, replicas: int, template_hash: str) -> bool:
    """Whether the Deployment runs ``replicas`` available pods of that template."""
    if deployment is None:
        return False
    meta, st = deployment.get("metadata") or {}, deployment.get("status") or {}
    return (
        (meta.get("annotations") or {}).get(TEMPLATE_HASH_ANNOTATION) == template_hash
        and int(st.get("observedGeneration") or 0) >= int(meta.get("generation") or 0)
        and int((deployment.get("spec") or {}).get("replicas") or 0) == replicas
        and int(st.get("updatedReplicas") or 0) >= replicas
        and int(st.get("availableReplicas") or 0) >= replicas
        and int(st.get("replicas") or 0) == replicas
    )


def rolled_out(deployment: Obj | None) -> bool:
    if deployment is None:
        return False
    meta, st = deployment.get("metadata") or {}, deployment.get("status") or {}
    desired = int((deployment.get("spec") or {}).get("replicas") or 0)
    return (
        int(st.get("observedGeneration") or 0) >= int(meta.get("generation") or 0)
        and int(st.get("updatedReplicas") or 0) == desired
        and int(st.get("availableReplicas") or 0) == desired
        and int(st.get("replicas") or 0) == desired
    )


# --- the next move ---------------------------------------------------------------------------


@dataclass(frozen=True)
class World:
    """What a pass sees of a ModelDeployment under the Canary strategy."""

    spec: api.ModelDeploymentSpec
    template_hash: str  # of the pod template that the spec renders
    stable: Obj | None  # the live stable Deployment
    canary: Obj | None  # the live canary Deployment
    previous: api.CanaryStatus | None
    command: str | None  # the annotation's value
    now: datetime
    # Why the canary's pods do not start (a stuck container's message), when they were looked at.
    canary_pod_failure: str | None = None

    @property
    def autoscaled(self) -> bool:
        return self.spec.autoscaling is not None

    @property
    def replicas(self) -> int:
        """The stable version's full size: the desired count, or the HPA's current choice."""
        if self.spec.autoscaling is not None:
            current = int(((self.stable or {}).get("spec") or {}).get("replicas") or 1)
            return self.spec.autoscaling.bound(current)
        return 1 if self.spec.replicas is None else self.spec.replicas

    @property
    def stable_hash(self) -> str | None:
        meta = (self.stable or {}).get("metadata") or {}
        return (meta.get("annotations") or {}).get(TEMPLATE_HASH_ANNOTATION)


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass
class Move:
    """What the pass does about the canary."""

    status: api.CanaryStatus | None
    apply_stable: bool = True  # render the stable Deployment from the spec (not during a canary)
    canary_replicas: int | None = None  # apply the canary Deployment at this size
    keep_canary: bool = False  # neither apply nor delete it (a promotion rolling out)
    stable_replicas: int | None = None  # scale the (frozen) stable Deployment to this
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None
    # Ready / Reconciling / Stalled while a canary runs or after its rollback.
    conditions: tuple[str, str, str] | None = None  # ready status, reason, message
    stalled: bool = False
    clear_command: bool = False
    # The pass must read both versions' counters and decide again with them.
    needs_readings: bool = False

    @property
    def delete_canary(self) -> bool:
        return self.canary_replicas is None and not self.keep_canary


def _model(spec: api.ModelDeploymentSpec) -> api.ServedModel:
    return api.ServedModel(
        uri=api.redact_uri(spec.model.uri), digest=spec.model.digest, version=spec.model.version
    )


def _what(model: api.ServedModel | None) -> str:
    if model is None:
        return "the new version"
    return (model.uri or "?") + (f" version {model.version}" if model.version else "")


def decide(world: World, readings: Mapping[str, scrape.Counters] | None = None) -> Move:  # noqa: PLR0911, PLR0912, PLR0915 - one state machine, read top to bottom
    """The next move. ``readings`` are both versions' counters ({"stable": ..., "canary": ...}),
    read when a first ``decide`` answered ``needs_readings``."""
    rollout = world.spec.rollout or api.Rollout()
    previous = world.previous
    if (
        rollout.strategy != "Canary"
        or world.spec.suspend
        or world.stable is None
        or world.stable_hash is None
        or world.replicas == 0
    ):
        # Nothing to protect (no stable version yet, no traffic) or no canary wanted: the
        # spec applies as is, and a canary left over goes.
        keep = previous if rollout.strategy == "Canary" and previous is not None else None
        if keep is not None and keep.state in ("Progressing", "Paused"):
            keep = keep.model_copy(update={"state": "RolledBack", "progress": "RolledBack"})
        return Move(status=keep)

    if world.stable_hash == world.template_hash:
        # The stable Deployment runs the spec's template (promoted, or never changed): a canary
        # still there goes once the stable pods have all rolled out.
        if world.canary is None:
            return Move(status=previous)
        if rolled_out(world.stable):
            return Move(status=previous)
        return Move(status=previous, keep_canary=True, requeue_after=WAIT_SECONDS)

    settings = rollout.canary_settings()
    steps, gates = settings.steps, settings.analysis
    now = timestamp(world.now)
    if (
        previous is not None
        and previous.template_hash == world.template_hash
        and previous.state == "RolledBack"
    ):
        stable_replicas = None if world.autoscaled else world.replicas
        message = (previous.analysis.message if previous.analysis else None) or "rolled back"
        return Move(
            status=previous,
            apply_stable=False,
            stable_replicas=stable_replicas,
            conditions=("False", api.Reason.CANARY_ROLLED_BACK, message),
            stalled=True,
            clear_command=world.command is not None,
        )

    events: list[Event] = []
    active = previous is not None and previous.state in ("Progressing", "Paused")
    if previous is None or previous.template_hash != world.template_hash or not active:
        restarted = active
        status = api.CanaryStatus(
            state="Progressing",
            step=1,
            steps=len(steps),
            model=_model(world.spec),
            template_hash=world.template_hash,
            started_at=now,
            step_started_at=now,
            analysis=api.CanaryAnalysisStatus(),
        )
        events.append(
            Event(
                "Normal",
                "CanaryStarted",
                (
                    "the spec changed during the canary: starting over with "
                    if restarted
                    else "canary of "
                )
                + f"{_what(status.model)}: step 1/{len(steps)} at {steps[0].weight}%",
            )
        )
    else:
        status = previous.model_copy(
            update={"steps": len(steps), "step": min(previous.step, len(steps))}
        )
    analysis = status.analysis or api.CanaryAnalysisStatus()

    def rollback(message: str) -> Move:
        rolled = status.model_copy(
            update={
                "state": "RolledBack",
                "analysis": analysis.model_copy(update={"message": message}),
                "weight": 0,
                "progress": f"RolledBack at {status.step}/{len(steps)}",
            }
        )
        return Move(
            status=rolled,
            apply_stable=False,
            stable_replicas=None if world.autoscaled else world.replicas,
            events=[
                *events,
                Event("Warning", "CanaryRolledBack", f"canary rolled back: {message}"),
            ],
            conditions=("False", api.Reason.CANARY_ROLLED_BACK, f"canary rolled back: {message}"),
            stalled=True,
            clear_command=world.command is not None,
        )

    def promote(message: str) -> Move:
        promoted = status.model_copy(
            update={"state": "Promoted", "progress": f"Promoted {len(steps)}/{len(steps)}"}
        )
        return Move(
            status=promoted,
            keep_canary=True,
            events=[*events, Event("Normal", "CanaryPromoted", message)],
            requeue_after=WAIT_SECONDS,
            clear_command=world.command is not None,
        )

    if world.command == "abort":
        return rollback("aborted by the serving.modeldeploy.io/canary annotation")
    if world.command == "promote":
        return promote("promoted by the serving.modeldeploy.io/canary annotation")

    step = steps[status.step - 1]
    stable_size, canary_size = plan(step.weight, world.replicas, autoscaled=world.autoscaled)
    weight = measured_weight(world.stable, world.canary)

    def progressing(state: State, detail: str, requeue: float, **update: Any) -> Move:
        current = status.model_copy(
            update={
                "state": state,
                "weight": weight,
                "progress": f"{state} {status.step}/{len(steps)} {weight}%",
                "analysis": analysis,
                **update,
            }
        )
        message = (
            f"canary step {status.step}/{len(steps)} ({step.weight}% asked, {weight}% of ready "
            f"pods): {detail}"
        )
        return Move(
            status=current,
            apply_stable=False,
            canary_replicas=canary_size,
            stable_replicas=stable,
            events=events,
            requeue_after=requeue,
            conditions=("False", api.Reason.CANARY_PROGRESSING, message),
        )

    stable: int | None = None
    if not _ready(world.canary, canary_size, world.template_hash):
        started = _parse_time(status.step_started_at) or world.now
        deadline = rollout.progress_deadline_seconds or DEFAULT_DEADLINE_SECONDS
        why = f": {world.canary_pod_failure}" if world.canary_pod_failure else ""
        if (world.now - started).total_seconds() > deadline:
            st = (world.canary or {}).get("status") or {}
            return rollback(
                f"progress deadline: {st.get('availableReplicas') or 0}/{canary_size} canary "
                f"pods available after {deadline}s (rollout.progressDeadlineSeconds){why}"
            )
        return progressing(
            "Progressing", f"waiting for {canary_size} canary pods{why}", WAIT_SECONDS
        )
    if not world.autoscaled:
        stable = stable_size
        live = world.stable or {}
        if (
            int((live.get("spec") or {}).get("replicas") or 0) != stable_size
            or int((live.get("status") or {}).get("replicas") or 0) > stable_size
        ):
            return progressing(
                "Progressing", f"stable version down to {stable_size} pods", WAIT_SECONDS
            )

    if status.split_at is None:
        events.append(
            Event(
                "Normal",
                "CanaryStep",
                f"step {status.step}/{len(steps)}: {weight}% of ready pods run the canary "
                f"({canary_size} canary, {stable_size} stable); holding {step.pause_seconds}s",
            )
        )
        if readings is None:
            return Move(status=None, needs_readings=True)
        return progressing(
            "Progressing",
            "analysing",
            float(gates.interval_seconds),
            split_at=now,
            baseline=dict(readings),
            analysis=analysis.model_copy(update={"time": now}),
        )

    state: State = status.state
    passed, baseline = status.passed, status.baseline
    last = _parse_time(analysis.time) or world.now
    if (world.now - last).total_seconds() >= gates.interval_seconds:
        if readings is None:
            return Move(status=None, needs_readings=True)
        before = baseline or {}
        result = judge(
            gates,
            scrape.since(readings.get(STABLE, {}), before.get(STABLE)),
            scrape.since(readings.get(CANARY, {}), before.get(CANARY)),
        )
        failures = analysis.failures + (result.verdict == "Failed")
        analysis = api.CanaryAnalysisStatus(
            verdict=result.verdict,
            message=result.message,
            stable=result.stable,
            canary=result.canary,
            latency_ratio=result.latency_ratio,
            prediction_shift=result.prediction_shift,
            failures=failures,
            time=now,
        )
        if result.verdict == "Failed":
            events.append(
                Event(
                    "Warning",
                    "CanaryAnalysisFailed",
                    f"failed interval {failures}: {result.message}",
                )
            )
            if failures > gates.failure_limit:
                return rollback(
                    f"{result.message} ({failures} failed intervals, "
                    f"failureLimit {gates.failure_limit})"
                )
        if result.verdict != "Inconclusive":
            baseline = dict(readings)  # the next interval counts from here
        passed += result.verdict == "Passed"
        state = "Paused" if result.verdict == "Inconclusive" else "Progressing"

    split_at = _parse_time(status.split_at) or world.now
    held = (world.now - split_at).total_seconds()
    if passed >= 1 and held >= step.pause_seconds:
        if status.step >= len(steps):
            return promote(
                f"canary promoted after {len(steps)} steps: {_what(status.model)} replaces the "
                "stable version"
            )
        nxt = steps[status.step]
        events.append(
            Event(
                "Normal",
                "CanaryStepPassed",
                f"step {status.step}/{len(steps)} passed ({analysis.message}); "
                f"step {status.step + 1} at {nxt.weight}%",
            )
        )
        status = status.model_copy(
            update={
                "step": status.step + 1,
                "step_started_at": now,
                "split_at": None,
                "passed": 0,
                "baseline": None,
            }
        )
        step = nxt
        stable_size, canary_size = plan(step.weight, world.replicas, autoscaled=world.autoscaled)
        stable = None  # the stable version keeps its pods until the next share is Ready
        return progressing("Progressing", f"waiting for {canary_size} canary pods", WAIT_SECONDS)

    last = _parse_time(analysis.time) or world.now
    until_analysis = gates.interval_seconds - (world.now - last).total_seconds()
    until_step = step.pause_seconds - held if passed >= 1 else until_analysis
    detail = analysis.message or "analysing"
    return progressing(
        state,
        detail,
        max(1.0, min(until_analysis, until_step)),
        passed=passed,
        baseline=baseline,
    )
