"""Reconcile orchestration: one pass, read in one direction.

    parse -> look -> plan -> write -> observe -> status

- parse: the body into the typed spec (or the error that names the field);
- look: the children as the watch cache has them; a full pass (a resync, a retry) reads every
  child from the API server first, which repairs what a missed watch event hid;
- plan: every child rendered once; the canary's move (``canary.decide``) and the token-review
  binding (``access``) applied to them;
- write: the children that differ, with the preconditions that make a stale cache harmless
  (``children.ChildWriter``); the HPA's hand-over of ``replicas`` (``render.replicas_handoff``);
- observe: the serving Deployment, the pods when a rollout needs explaining, ModelDrift at its
  own interval (``drift``);
- status: computed (``status``), and written once, if it changed.

Knows the Kubernetes API only through ``kube.Kube``, ``children`` and ``pods``, and kopf not at
all, so tests drive it directly against a real API server. Level-based: a pass looks at the
whole resource, whatever triggered it. What it remembers per resource only saves work; what a
restarted operator (or a new leader) needs is in the status it wrote (canary progress, the
drift verdict's pending change).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from modeldeploy import access, api, canary, drift, metrics, pods, render, scrape, status
from modeldeploy.children import ChildCache, ChildWriter, NameConflictError, digest
from modeldeploy.kube import Kube, KubeError
from modeldeploy.settings import Settings

logger = logging.getLogger("modeldeploy.reconcile")

Obj = dict[str, Any]
IO_THREADS = 16
# A status write that only moves a rollout's figures waits this long after the last write: a
# rollout's steps then cost one write, not one per pod (a condition's status goes at once).
PROGRESS_WRITE_SECONDS = 5.0


def utcnow() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _epoch(text: str | None) -> float | None:
    if not text:
        return None
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


def _stamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def describe_validation_error(error: ValidationError) -> str:
    """One line per problem, each naming the field as a user writes it (spec.model.uri)."""
    lines = []
    for problem in error.errors():
        where = ".".join(str(part) for part in problem["loc"])
        message = problem["msg"].removeprefix("Value error, ")
        lines.append(f"{where}: {message}" if where else message)
    return "; ".join(lines)


@dataclass
class Outcome:
    """What one reconcile did, for logs, metrics, Events and the work queue."""

    name: str
    namespace: str
    phase: str
    changed: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    status_written: bool = False
    transitions: list[status.Transition] = field(default_factory=list)
    # Why the children could not be applied (retried with backoff until they can).
    apply_error: KubeError | None = None
    name_conflict: bool = False
    # When to look again on the resource's own clock (a canary step, the drift check).
    requeue_after: float | None = None
    events: list[canary.Event] = field(default_factory=list)

    @property
    def did_something(self) -> bool:
        return bool(self.changed or self.deleted or self.status_written)

    def look_again(self, seconds: float) -> None:
        self.requeue_after = min(self.requeue_after or seconds, seconds)


@dataclass
class Plan:
    """Every child of one pass, rendered once: what to write, what must go, and the frozen
    stable Deployment's size while a canary runs."""

    wanted: list[Obj]
    unwanted: list[tuple[render.ChildKind, str]]
    scale_stable: int | None = None


def _rolled_out(deployment: Obj) -> bool:
    desired = (deployment.get("spec") or {}).get("replicas", 1)
    st = deployment.get("status") or {}
    return all(
        st.get(key, 0) == desired for key in ("updatedReplicas", "availableReplicas", "replicas")
    )


class Reconciler:
    """Brings one ModelDeployment's children and status in line with its spec."""

    def __init__(self, kube: Kube, settings: Settings, clock: Callable[[], str] = utcnow):
        self.kube = kube
        self.settings = settings
        self.clock = clock
        self.children = ChildCache(settings.field_manager)
        # A pass reads and writes its children concurrently: its latency is one round trip per
        # step instead of one per child.
        self._io = ThreadPoolExecutor(max_workers=IO_THREADS, thread_name_prefix="kube-io")
        self._writer = ChildWriter(kube, self.children, self._io)
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._phases: dict[str, str] = {}
        # The status this operator last wrote, per resource: it is the only status writer, and
        # a body handed in by a watch event can predate that write.
        self._written: dict[str, Obj] = {}
        # Why the last apply of a resource's children failed, until one succeeds: status-only
        # passes must not report Ready while a child could not be written.
        self._apply_failures: dict[str, status.ApplyFailure] = {}
        # When each resource's status was last written and its pods last read for drift
        # (monotonic seconds).
        self._status_written_at: dict[str, float] = {}
        self._drift_checked: dict[str, float] = {}

    @contextmanager
    def _lock(self, uid: str) -> Iterator[None]:
        with self._guard:
            lock = self._locks.setdefault(uid, threading.Lock())
        with lock:
            yield

    def close(self) -> None:
        self._io.shutdown(wait=False, cancel_futures=True)
        self.kube.close()

    def forget(self, uid: str) -> None:
        """Drop everything remembered about a ModelDeployment that is gone."""
        with self._guard:
            self._locks.pop(uid, None)
            self._writer.forget(uid)
            self._written.pop(uid, None)
            self._apply_failures.pop(uid, None)
            self._status_written_at.pop(uid, None)
            self._drift_checked.pop(uid, None)
            known = self._phases.pop(uid, None) is not None
        if known:
            self._update_phase_gauge()

    def remembered(self) -> dict[str, int]:
        """Sizes of the per-resource memory (for tests and the leak benchmark)."""
        with self._guard:
            return {
                "locks": len(self._locks),
                "applied": len(self._writer),
                "written": len(self._written),
                "phases": len(self._phases),
                "apply_failures": len(self._apply_failures),
            }

    def child_needs_pass(self, child: Obj, *, deleted: bool) -> bool:
        """Record a child's watch event; whether its owner needs a pass.

        A Deployment's status is the resource's status; any other child matters only when it
        differs from what the operator last wrote (edited or deleted by someone else).
        """
        self.children.observe(child, deleted=deleted)
        if deleted or child.get("kind") == render.DEPLOYMENT.kind:
            return True
        return self._writer.differs_from_written(child)

    def reconcile(
        self, body: Obj, *, full: bool = True, trigger: str = "spec", inspect_pods: bool = True
    ) -> Outcome:
        """One pass; ``full`` reads every child from the API server first instead of trusting
        the cache; ``inspect_pods`` lists the pods of a rollout that is not done, to explain it.

        Raises KubeError when the status cannot be read or written; a child that cannot be
        applied is reported in status and in ``Outcome.apply_error`` instead.
        """
        started = time.monotonic()
        meta = body["metadata"]
        try:
            with self._lock(meta["uid"]):
                outcome = self._reconcile(body, full=full, inspect_pods=inspect_pods)
        except Exception:
            metrics.RECONCILES.labels(trigger=trigger, result="error").inc()
            raise
        finally:
            metrics.RECONCILE_SECONDS.labels(trigger=trigger).observe(time.monotonic() - started)
        metrics.RECONCILES.labels(
            trigger=trigger, result="changed" if outcome.did_something else "unchanged"
        ).inc()
        with self._guard:
            self._phases[meta["uid"]] = outcome.phase
        self._update_phase_gauge()
        if outcome.did_something:
            logger.info(
                "reconciled %s/%s trigger=%s phase=%s applied=%s deleted=%s status_written=%s "
                "duration_ms=%.1f",
                outcome.namespace,
                outcome.name,
                trigger,
                outcome.phase,
                ",".join(outcome.changed) or "-",
                ",".join(outcome.deleted) or "-",
                outcome.status_written,
                (time.monotonic() - started) * 1000,
            )
        return outcome

    def _update_phase_gauge(self) -> None:
        counts: dict[str, int] = dict.fromkeys(status.PHASES, 0)
        with self._guard:
            phases = list(self._phases.values())
        for phase in phases:
            counts[phase] = counts.get(phase, 0) + 1
        for phase, count in counts.items():
            metrics.RESOURCES.labels(phase=phase).set(count)

    # --- the pass --------------------------------------------------------------------------

    def _reconcile(self, body: Obj, *, full: bool, inspect_pods: bool) -> Outcome:
        meta = body["metadata"]
        owner = render.Owner(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"])
        outcome = Outcome(name=owner.name, namespace=owner.namespace, phase="Pending")
        # parse
        spec: api.ModelDeploymentSpec | None = None
        spec_error: str | None = None
        try:
            spec = api.parse_resource(body).spec
        except ValidationError as error:
            spec_error = describe_validation_error(error)
        written = self._written.get(owner.uid)
        previous = written if written is not None else body.get("status") or {}
        # The pods' /metrics, read at most once in this pass (canary analysis and drift).
        pod_metrics = pods.PodMetrics(self.kube, owner, self._io)
        move: canary.Move | None = None
        if spec is not None:
            try:
                # look: a resource no pass has seen controls no child yet, nothing to read
                if full and previous.get("observedGeneration"):
                    rollout = spec.rollout or api.Rollout()
                    self._writer.read_all(
                        owner,
                        with_canary=rollout.strategy == "Canary" or bool(previous.get("canary")),
                    )
                # plan
                children = render.render_children(owner, spec, self.settings)
                move = self._canary_move(
                    spec,
                    owner,
                    body=body,
                    previous=previous,
                    children=children,
                    pod_metrics=pod_metrics,
                )
                plan = self._plan(spec, owner, children, move)
                # write
                done = self._writer.write(plan.wanted, plan.unwanted, spec, owner, fresh=full)
                if plan.scale_stable is not None:
                    self._writer.scale(owner, plan.scale_stable, done)
                outcome.changed, outcome.deleted = done.changed, done.deleted
                self._bind_reviewer(spec, owner, outcome, full=full)
                self._apply_failures.pop(owner.uid, None)
            except KubeError as error:
                outcome.apply_error = error
                self._apply_failures[owner.uid] = status.ApplyFailure(
                    permanent=error.permanent, message=error.message
                )
            except NameConflictError as error:
                outcome.name_conflict = True
                self._apply_failures[owner.uid] = status.ApplyFailure(
                    permanent=True, message=str(error), reason=api.Reason.NAME_CONFLICT
                )
        if move is not None:  # a canary runs on its own clock and tells its steps
            outcome.events = move.events
            if move.requeue_after is not None:
                outcome.look_again(move.requeue_after)
        # observe
        deployment = self._writer.deployment(owner, owner.name)
        pod_failure = None
        if inspect_pods and deployment is not None and not _rolled_out(deployment):
            pod_failure = pods.failure(self.kube, owner)
        drift_condition, drift_pending = self._drift(spec, owner, previous, outcome, pod_metrics)
        # status
        observed = status.Observed(
            generation=int(meta.get("generation") or 0),
            spec=spec,
            spec_error=spec_error,
            deployment=deployment,
            pod_failure=pod_failure,
            selector=render.selector_string(owner),
            url=render.service_url(
                owner, self.settings.cluster_domain, tls=spec is not None and spec.tls is not None
            ),
            apply_failure=self._apply_failures.get(owner.uid),
            canary=None
            if move is None
            else status.CanaryView(move.status, move.conditions, stalled=move.stalled),
            drift=drift_condition,
            drift_clock=drift_pending,
        )
        new_status, transitions = status.compute_status(observed, previous, self.clock())
        outcome.phase = new_status["phase"]
        self._write_status(owner, previous, new_status, transitions, outcome)
        return outcome

    def _write_status(
        self,
        owner: render.Owner,
        previous: Obj,
        new_status: Obj,
        transitions: list[status.Transition],
        outcome: Outcome,
    ) -> None:
        """One status write if anything changed; a rollout's mere progress waits a little."""
        if not status.status_differs(previous, new_status):
            return
        since = time.monotonic() - self._status_written_at.get(owner.uid, 0.0)
        if status.only_progress_differs(previous, new_status) and since < PROGRESS_WRITE_SECONDS:
            outcome.look_again(PROGRESS_WRITE_SECONDS - since)
            return
        self.kube.apply_status(owner.namespace, owner.name, new_status)
        self._written[owner.uid] = new_status
        self._status_written_at[owner.uid] = time.monotonic()
        metrics.WRITES.labels(kind=api.KIND, verb="apply-status").inc()
        outcome.status_written = True
        outcome.transitions = transitions

    # --- the canary ------------------------------------------------------------------------

    def _canary_move(
        self,
        spec: api.ModelDeploymentSpec,
        owner: render.Owner,
        *,
        body: Obj,
        previous: Obj,
        children: render.Children,
        pod_metrics: pods.PodMetrics,
    ) -> canary.Move | None:
        """What the canary logic wants of this pass; None for a resource that never had one
        (the common case costs nothing)."""
        rollout = spec.rollout or api.Rollout()
        canary_name = canary.canary_name(owner.name)
        cached = self.children.get(render.DEPLOYMENT, owner.namespace, canary_name)
        if rollout.strategy != "Canary" and not previous.get("canary") and cached is None:
            return None
        if cached is not None and cached.controller != owner.uid:
            raise NameConflictError(render.DEPLOYMENT.kind, owner.namespace, canary_name)
        live_canary = self._writer.deployment(owner, canary_name)
        failure = None
        if live_canary is not None and not canary.rolled_out(live_canary):
            # Starting, or stuck: a stuck container says why (only while a canary waits).
            found = pods.failure(self.kube, owner, track=canary.CANARY)
            failure = f"{found.reason}: {found.message}" if found else None
        command = ((body.get("metadata") or {}).get("annotations") or {}).get(
            canary.COMMAND_ANNOTATION
        )
        world = canary.World(
            spec=spec,
            template_hash=render.stable_template_hash(children),
            stable=self._writer.deployment(owner, owner.name),
            canary=live_canary,
            previous=api.CanaryStatus.model_validate(previous["canary"])
            if previous.get("canary")
            else None,
            command=command if command in ("promote", "abort") else None,
            now=datetime.now(UTC),
            canary_pod_failure=failure,
        )
        move = canary.decide(world)
        if move.needs_readings:  # the analysis interval is over: read both versions' pods
            move = canary.decide(world, pod_metrics.readings())
        if move.clear_command:
            self.kube.remove_annotation(owner.namespace, owner.name, canary.COMMAND_ANNOTATION)
        return move

    def _plan(
        self,
        spec: api.ModelDeploymentSpec,
        owner: render.Owner,
        children: render.Children,
        move: canary.Move | None,
    ) -> Plan:
        """The rendered children with the canary's move applied to them."""
        plan = Plan(
            wanted=children.wanted, unwanted=[(kind, owner.name) for kind in children.unwanted]
        )
        if move is None:
            return plan
        if not move.apply_stable:  # the stable version keeps its template, only scaled
            plan.wanted = [obj for obj in plan.wanted if obj["kind"] != render.DEPLOYMENT.kind]
            plan.scale_stable = move.stable_replicas
        if move.canary_replicas is not None:
            plan.wanted.append(
                render.render_deployment(
                    owner, spec, self.settings, track=canary.CANARY, replicas=move.canary_replicas
                )
            )
        elif move.delete_canary:
            plan.unwanted.append((render.DEPLOYMENT, canary.canary_name(owner.name)))
        return plan

    # --- the token-review binding (auth: Kubernetes) ----------------------------------------

    def _bind_reviewer(
        self, spec: api.ModelDeploymentSpec, owner: render.Owner, outcome: Outcome, *, full: bool
    ) -> None:
        """With auth on, the ClusterRoleBinding that lets the model pods review tokens; removed
        when auth is turned off (or the resource deleted: unbind_reviewer, sweep_bindings).
        Cluster-scoped, so not watched: written again on every full pass."""
        name = access.reviewer_binding_name(owner.namespace, owner.name)
        kind = render.REVIEWER_BINDING
        if access.auth_on(spec):
            binding = render.render_reviewer_binding(owner)
            hashed = digest(binding)
            if not full and self._writer.written_as(owner.uid, kind, name) == hashed:
                return
            self.kube.apply(binding)
            metrics.WRITES.labels(kind=kind.kind, verb="apply").inc()
            self._writer.remember(owner.uid, kind, name, hashed)
        elif self._writer.drop(owner.uid, kind, name) and self.unbind_reviewer(
            owner.namespace, owner.name
        ):
            outcome.deleted.append(kind.kind)

    def unbind_reviewer(self, namespace: str, name: str) -> bool:
        """Deletes a resource's token-review binding; False when there was none."""
        deleted = self.kube.delete(
            render.REVIEWER_BINDING, "", access.reviewer_binding_name(namespace, name)
        )
        if deleted:
            metrics.WRITES.labels(kind=render.REVIEWER_BINDING.kind, verb="delete").inc()
        return deleted

    def sweep_bindings(self, namespaces: tuple[str, ...]) -> list[str]:
        """Delete the token-review bindings that no live resource wants (their resource was
        deleted while no operator ran); the names deleted.

        The bindings are listed before the resources: a binding is made after its resource,
        so a binding listed first belongs to a resource the second list shows, if it lives.
        """
        bindings = self.kube.list_reviewer_bindings()
        wanted = {
            (item["metadata"]["namespace"], item["metadata"]["name"])
            for item in self.kube.list_model_deployments(namespaces)
            if ((item.get("spec") or {}).get("auth") or {}).get("mode") == api.AuthMode.KUBERNETES
        }
        swept = []
        for binding in access.orphaned_bindings(bindings, wanted, namespaces):
            meta = binding["metadata"]
            try:
                if self.kube.delete(render.REVIEWER_BINDING, "", meta["name"], uid=meta["uid"]):
                    metrics.WRITES.labels(kind=render.REVIEWER_BINDING.kind, verb="delete").inc()
                    swept.append(meta["name"])
            except KubeError as error:
                if not error.precondition_failed:  # replaced since the list: not an orphan
                    raise
        return swept

    # --- drift -----------------------------------------------------------------------------

    def _drift(
        self,
        spec: api.ModelDeploymentSpec | None,
        owner: render.Owner,
        previous: Obj,
        outcome: Outcome,
        pod_metrics: pods.PodMetrics,
    ) -> tuple[drift.Wanted | None, api.DriftStatus | None]:
        """ModelDrift from the ready pods' PSI figures, read at the check's own interval
        whatever brought the pass, and its pending change, kept in status (both None without
        a reference profile)."""
        monitoring = spec.monitoring if spec is not None else None
        if monitoring is None or monitoring.reference is None:
            self._drift_checked.pop(owner.uid, None)
            return None, None
        window = monitoring.drift_window_seconds
        pending = api.DriftStatus.model_validate(previous.get("drift") or {})
        current = status.previous_condition(
            previous.get("conditions") or [], api.ConditionType.MODEL_DRIFT
        )
        # When the pods were last read only saves work: a restarted operator reads at once.
        wait = drift.due_in(
            self._drift_checked.get(owner.uid), now=time.monotonic(), sustain=window
        )
        if wait > 0:
            outcome.look_again(wait)
            return current, pending if pending.pending_since else None
        self._drift_checked[owner.uid] = time.monotonic()
        figures = pod_metrics.drift_figures()
        now = time.time()
        verdict = drift.decide(
            scrape.worst(figures) if figures else None,
            monitoring.drift_threshold,
            current,
            _epoch(pending.pending_since),
            now=now,
            sustain=window,
        )
        outcome.look_again(drift.check_seconds(window))
        if verdict.pending_since is None:
            return verdict.condition, None
        return verdict.condition, api.DriftStatus(pending_since=_stamp(verdict.pending_since))
