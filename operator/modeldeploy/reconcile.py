"""Reconcile orchestration: parse, render, apply what differs, observe, compute status, write it.

Knows the Kubernetes API only through ``kube.Kube`` and kopf not at all, so tests drive it
directly against a real API server. Level-based: a pass looks at the whole resource, whatever
triggered it, and leaves it as the spec says or says why not.

What the operator remembers per resource only saves work; it never decides a write on its own:
- ``ChildCache`` mirrors the children as the watch delivers them (an informer's cache), so a
  child event costs no read;
- the digest and fingerprint of each child after the operator's last apply: a child whose
  rendered form and live fingerprint are unchanged is not written again;
- before any write, the child is read from the API server and refused if another controller
  (or nobody) controls it: memory can be stale after a missed watch event, the server cannot.
"""

from __future__ import annotations

import hashlib
import json
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

from modeldeploy import access, api, canary, drift, metrics, render, scrape, status
from modeldeploy.kube import Kube, KubeError
from modeldeploy.settings import Settings

logger = logging.getLogger("modeldeploy.reconcile")

Obj = dict[str, Any]
ChildKey = tuple[str, str, str]  # kind, namespace, name
IO_THREADS = 16


def utcnow() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def describe_validation_error(error: ValidationError) -> str:
    """One line per problem, each naming the field as a user writes it (spec.model.uri)."""
    lines = []
    for problem in error.errors():
        where = ".".join(str(part) for part in problem["loc"])
        message = problem["msg"].removeprefix("Value error, ")
        lines.append(f"{where}: {message}" if where else message)
    return "; ".join(lines)


class NameConflictError(Exception):
    """A child's name is taken by an object this ModelDeployment does not control."""

    def __init__(self, kind: str, namespace: str, name: str):
        super().__init__(
            f"a {kind} named {name} already exists in namespace {namespace} and is not "
            "controlled by this ModelDeployment; the operator does not take it over: delete or "
            "rename it (or this ModelDeployment)"
        )


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
    # A canary in progress: when to look again, and what to tell (as Events).
    requeue_after: float | None = None
    events: list[canary.Event] = field(default_factory=list)

    @property
    def did_something(self) -> bool:
        return bool(self.changed or self.deleted or self.status_written)


def fingerprint(obj: Obj) -> str:
    """What changes when a child's spec changes: generation where the kind has one."""
    meta = obj.get("metadata") or {}
    generation = meta.get("generation")
    return f"g{generation}" if generation else f"rv{meta.get('resourceVersion')}"


def _digest(obj: Obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def controller_uid(obj: Obj) -> str | None:
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            uid: str = ref.get("uid", "")
            return uid
    return None


def owner_name(obj: Obj) -> str | None:
    """Name of the ModelDeployment that controls ``obj``, if one does."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if (
            ref.get("controller")
            and ref.get("kind") == api.KIND
            and str(ref.get("apiVersion", "")).startswith(f"{api.GROUP}/")
        ):
            name: str = ref["name"]
            return name
    return None


def _owns_replicas(deployment: Obj, manager: str) -> bool:
    for entry in (deployment.get("metadata") or {}).get("managedFields") or []:
        if entry.get("manager") == manager and entry.get("operation") == "Apply":
            spec = (entry.get("fieldsV1") or {}).get("f:spec") or {}
            if "f:replicas" in spec:
                return True
    return False


@dataclass(frozen=True)
class CachedChild:
    """A child as the last watch event showed it (Deployments keep what status needs)."""

    uid: str
    fingerprint: str
    controller: str | None
    deployment: Obj | None = None
    resource_version: str = ""


def _status_view(deployment: Obj) -> Obj:
    """The parts of a Deployment that status is computed from."""
    meta = deployment.get("metadata") or {}
    hashed = (meta.get("annotations") or {}).get(canary.TEMPLATE_HASH_ANNOTATION)
    return {
        "metadata": {
            "name": meta.get("name"),
            "uid": meta.get("uid"),
            "generation": meta.get("generation"),
            "ownerReferences": meta.get("ownerReferences") or [],
            "annotations": {canary.TEMPLATE_HASH_ANNOTATION: hashed} if hashed else {},
        },
        "spec": {"replicas": (deployment.get("spec") or {}).get("replicas", 1)},
        "status": deployment.get("status") or {},
    }


class ChildCache:
    """The children as the watches deliver them, keyed by kind, namespace and name."""

    def __init__(self) -> None:
        self._items: dict[ChildKey, CachedChild] = {}
        self._guard = threading.Lock()

    def observe(self, obj: Obj, *, deleted: bool = False) -> CachedChild | None:
        """Record one watch event; the previous entry for the same object."""
        meta = obj.get("metadata") or {}
        key = (str(obj.get("kind")), meta.get("namespace", ""), meta.get("name", ""))
        with self._guard:
            before = self._items.get(key)
            if deleted:
                if before is not None and before.uid == meta.get("uid"):
                    del self._items[key]
                return before
            self._items[key] = CachedChild(
                uid=meta.get("uid", ""),
                fingerprint=fingerprint(obj),
                controller=controller_uid(obj),
                deployment=_status_view(obj) if obj.get("kind") == render.DEPLOYMENT.kind else None,
                resource_version=meta.get("resourceVersion", ""),
            )
        return before

    def get(self, kind: render.ChildKind, namespace: str, name: str) -> CachedChild | None:
        with self._guard:
            return self._items.get((kind.kind, namespace, name))

    def __len__(self) -> int:
        return len(self._items)


class Reconciler:
    """Brings one ModelDeployment's children and status in line with its spec."""

    def __init__(self, kube: Kube, settings: Settings, clock: Callable[[], str] = utcnow):
        self.kube = kube
        self.settings = settings
        self.clock = clock
        self.children = ChildCache()
        # A pass reads and writes its children concurrently: its latency is one round trip per
        # step (read, ownership, write) instead of one per child.
        self._io = ThreadPoolExecutor(max_workers=IO_THREADS, thread_name_prefix="kube-io")
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        # (resource uid, kind, name) -> (digest of the rendered child, its fingerprint after apply)
        self._applied: dict[tuple[str, str, str], tuple[str, str]] = {}
        self._phases: dict[str, str] = {}
        # The status this operator last wrote, per resource: it is the only status writer, and
        # a body handed in by a watch event can predate that write.
        self._written: dict[str, Obj] = {}
        # Why the last apply of a resource's children failed, until one succeeds: status-only
        # passes must not report Ready while a child could not be written.
        self._apply_failures: dict[str, status.ApplyFailure] = {}
        # Since when the pods' PSI figures disagree with ModelDrift (monotonic seconds).
        self._drift_since: dict[str, float] = {}

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
            for key in [key for key in self._applied if key[0] == uid]:
                del self._applied[key]
            self._written.pop(uid, None)
            self._apply_failures.pop(uid, None)
            self._drift_since.pop(uid, None)
            known = self._phases.pop(uid, None) is not None
        if known:
            self._update_phase_gauge()

    def remembered(self) -> dict[str, int]:
        """Sizes of the per-resource memory (for tests and the leak benchmark)."""
        with self._guard:
            return {
                "locks": len(self._locks),
                "applied": len(self._applied),
                "written": len(self._written),
                "phases": len(self._phases),
                "apply_failures": len(self._apply_failures),
            }

    def child_needs_pass(self, child: Obj, *, deleted: bool) -> bool:
        """Record a child's watch event; whether its owner needs a pass.

        A Deployment's status is the resource's status; any other child matters only when it
        differs from what the operator last applied (edited or deleted by someone else).
        """
        self.children.observe(child, deleted=deleted)
        if deleted or child.get("kind") == render.DEPLOYMENT.kind:
            return True
        owner = controller_uid(child)
        name = (child.get("metadata") or {}).get("name", "")
        applied = self._applied.get((owner or "", str(child.get("kind")), name))
        return applied is None or applied[1] != fingerprint(child)

    def reconcile(
        self, body: Obj, *, full: bool = True, trigger: str = "spec", inspect_pods: bool = True
    ) -> Outcome:
        """One pass; ``full`` reads every child from the API server instead of the cache;
        ``inspect_pods`` lists the pods of a rollout that is not done, to explain it.

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

    def _reconcile(self, body: Obj, *, full: bool, inspect_pods: bool) -> Outcome:
        meta = body["metadata"]
        name, namespace, uid = meta["name"], meta["namespace"], meta["uid"]
        owner = render.Owner(name=name, namespace=namespace, uid=uid)
        outcome = Outcome(name=name, namespace=namespace, phase="Pending")

        spec: api.ModelDeploymentSpec | None = None
        spec_error: str | None = None
        try:
            spec = api.parse_resource(body).spec
        except ValidationError as error:
            spec_error = describe_validation_error(error)

        written = self._written.get(uid)
        previous = written if written is not None else body.get("status") or {}
        deployment: Obj | None = None
        move: canary.Move | None = None
        # The pods' /metrics, read at most once in this pass (canary analysis and drift).
        pod_metrics = _PodMetrics(lambda: self._metrics_targets(owner), self._io)
        if spec is not None:
            try:
                move = self._canary_move(spec, owner, body, previous, pod_metrics, full=full)
                deployment = self._apply_children(
                    spec,
                    owner,
                    outcome,
                    full=full,
                    move=move,
                    new=not previous.get("observedGeneration"),
                )
                self._apply_failures.pop(uid, None)
            except KubeError as error:
                outcome.apply_error = error
                self._apply_failures[uid] = status.ApplyFailure(
                    permanent=error.permanent, message=error.message
                )
            except NameConflictError as error:
                outcome.name_conflict = True
                self._apply_failures[uid] = status.ApplyFailure(
                    permanent=True, message=str(error), reason=api.Reason.NAME_CONFLICT
                )
            if deployment is None:
                deployment = self._deployment(owner, owner.name, full=full)
        if deployment is not None and controller_uid(deployment) != uid:
            deployment = None  # someone else's: its rollout says nothing about this resource

        pod_failure = None
        if inspect_pods and deployment is not None and not self._rolled_out(deployment):
            pods = self.kube.list_pods(namespace, render.selector_string(owner))
            pod_failure = status.summarize_pod_failure(pods)

        drift_condition = None if spec is None else self._drift(spec, owner, previous, pod_metrics)
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
            apply_failure=self._apply_failures.get(uid),
            canary=None
            if move is None
            else status.CanaryView(move.status, move.conditions, stalled=move.stalled),
            drift=drift_condition,
        )
        if drift_condition is not None and spec is not None and spec.monitoring is not None:
            every = drift.check_seconds(spec.monitoring.drift_window_seconds)
            outcome.requeue_after = min(outcome.requeue_after or every, every)
        new_status, transitions = status.compute_status(observed, previous, self.clock())
        outcome.phase = new_status["phase"]
        if status.status_differs(previous, new_status):
            self.kube.apply_status(namespace, name, new_status)
            self._written[uid] = new_status
            metrics.WRITES.labels(kind=api.KIND, verb="apply-status").inc()
            outcome.status_written = True
            outcome.transitions = transitions
        return outcome

    def _deployment(self, owner: render.Owner, name: str, *, full: bool) -> Obj | None:
        cached = None if full else self.children.get(render.DEPLOYMENT, owner.namespace, name)
        if cached is not None and cached.deployment is not None:
            return cached.deployment
        live = self.kube.get(render.DEPLOYMENT, owner.namespace, name)
        if live is not None:
            self.children.observe(live)
        return live

    # --- canary ----------------------------------------------------------------------------

    def _canary_move(
        self,
        spec: api.ModelDeploymentSpec,
        owner: render.Owner,
        body: Obj,
        previous: Obj,
        pod_metrics: _PodMetrics,
        *,
        full: bool,
    ) -> canary.Move | None:
        """What the canary logic wants of this pass; None for a resource that never had one
        (the common case costs nothing)."""
        rollout = spec.rollout or api.Rollout()
        canary_name = canary.canary_name(owner.name)
        if (
            rollout.strategy != "Canary"
            and not previous.get("canary")
            and self.children.get(render.DEPLOYMENT, owner.namespace, canary_name) is None
        ):
            return None
        stable = self._deployment(owner, owner.name, full=full)
        live_canary = self._deployment(owner, canary_name, full=full)
        if stable is not None and controller_uid(stable) != owner.uid:
            stable = None
        if live_canary is not None and controller_uid(live_canary) != owner.uid:
            raise NameConflictError(render.DEPLOYMENT.kind, owner.namespace, canary_name)
        annotations = (body.get("metadata") or {}).get("annotations") or {}
        command = annotations.get(canary.COMMAND_ANNOTATION)
        failure = None
        if live_canary is not None and not canary.rolled_out(live_canary):
            # Starting, or stuck: a stuck container says why (only while a canary waits).
            pods = self.kube.list_pods(
                owner.namespace,
                f"{render.selector_string(owner)},{canary.TRACK_LABEL}={canary.CANARY}",
            )
            found = status.summarize_pod_failure(pods)
            failure = f"{found.reason}: {found.message}" if found else None
        wanted = render.render_deployment(owner, spec, self.settings)
        world = canary.World(
            spec=spec,
            template_hash=wanted["metadata"]["annotations"][canary.TEMPLATE_HASH_ANNOTATION],
            stable=stable,
            canary=live_canary,
            previous=api.CanaryStatus.model_validate(previous["canary"])
            if previous.get("canary")
            else None,
            command=command if command in ("promote", "abort") else None,
            now=datetime.now(UTC),
            canary_pod_failure=failure,
        )
        move = canary.decide(world)
        if move.needs_readings:
            move = canary.decide(world, _readings(pod_metrics))
        if move.clear_command:
            self.kube.remove_annotation(owner.namespace, owner.name, canary.COMMAND_ANNOTATION)
        return move

    # --- drift -----------------------------------------------------------------------------

    def _drift(
        self,
        spec: api.ModelDeploymentSpec,
        owner: render.Owner,
        previous: Obj,
        pod_metrics: _PodMetrics,
    ) -> drift.Wanted | None:
        """ModelDrift from the ready pods' PSI figures (None without a reference profile)."""
        monitoring = spec.monitoring
        if monitoring is None or monitoring.reference is None:
            self._drift_since.pop(owner.uid, None)
            return None

        readings = [scrape.drift_figures(text) for _, text in pod_metrics.texts()]
        verdict = drift.decide(
            scrape.worst(readings) if readings else None,
            monitoring.drift_threshold,
            status.previous_condition(
                previous.get("conditions") or [], api.ConditionType.MODEL_DRIFT
            ),
            self._drift_since.get(owner.uid),
            now=time.monotonic(),
            sustain=monitoring.drift_window_seconds,
        )
        if verdict.pending_since is None:
            self._drift_since.pop(owner.uid, None)
        else:
            self._drift_since[owner.uid] = verdict.pending_since
        return verdict.condition

    def _metrics_targets(self, owner: render.Owner) -> list[tuple[str, str]]:
        """(track, metrics URL) of every ready pod of the resource."""
        pods = self.kube.list_pods(owner.namespace, render.selector_string(owner), limit=500)
        targets: list[tuple[str, str]] = []
        for pod in pods:
            st = pod.get("status") or {}
            ready = any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in st.get("conditions") or []
            )
            if ready and st.get("podIP"):
                track = ((pod.get("metadata") or {}).get("labels") or {}).get(
                    canary.TRACK_LABEL, canary.STABLE
                )
                targets.append((track, f"http://{st['podIP']}:{render.HEALTH_PORT}/metrics"))
        return targets

    @staticmethod
    def _rolled_out(deployment: Obj) -> bool:
        spec_ = deployment.get("spec") or {}
        st = deployment.get("status") or {}
        desired = spec_.get("replicas", 1)
        return bool(
            st.get("updatedReplicas", 0) == desired
            and st.get("availableReplicas", 0) == desired
            and st.get("replicas", 0) == desired
        )

    def _live_fingerprint(
        self, kind: render.ChildKind, owner: render.Owner, name: str, *, full: bool
    ) -> tuple[str | None, Obj | None, bool]:
        """The child's fingerprint if this resource controls it, the object, and whether it
        was read from the API server (a full pass reads; otherwise the cache answers)."""
        if full:
            live = self.kube.get(kind, owner.namespace, name)
            if live is None:
                return None, None, True
            self.children.observe(live)
            return (fingerprint(live) if controller_uid(live) == owner.uid else None), live, True
        cached = self.children.get(kind, owner.namespace, name)
        if cached is None or cached.controller != owner.uid:
            return None, None, False
        return cached.fingerprint, None, False

    def _apply_children(
        self,
        spec: api.ModelDeploymentSpec,
        owner: render.Owner,
        outcome: Outcome,
        *,
        full: bool,
        move: canary.Move | None = None,
        new: bool = False,
    ) -> Obj | None:
        """Write the children that differ; the Deployment as applied or read, if known.
        ``new``: no pass has seen this resource yet (its status has no observedGeneration)."""
        children = render.render_children(owner, spec, self.settings)
        wanted, unwanted = children.wanted, [(kind, owner.name) for kind in children.unwanted]
        frozen: Obj | None = None
        if move is not None:
            frozen = self._plan_canary(
                move, spec=spec, owner=owner, outcome=outcome, wanted=wanted, unwanted=unwanted
            )
        # The children that must go are read alongside the ones to write, not after them; a
        # resource no pass has seen yet controls none (its pass skips those reads).
        owned_unwanted = [
            self._io.submit(self._owned_unwanted, kind, owner, name, read=full and not new)
            for kind, name in unwanted
        ]
        pending, deployment = self._differing(wanted, owner, full=full)
        # Ownership is read from the API server before anything is written.
        lives = list(
            self._io.map(
                lambda item: (
                    item.live if item.read else self.kube.get(item.kind, owner.namespace, item.name)
                ),
                pending,
            )
        )
        checked: list[_Pending] = []
        for item, live in zip(pending, lives, strict=True):
            if live is not None and controller_uid(live) != owner.uid:
                raise NameConflictError(item.kind.kind, owner.namespace, item.name)
            checked.append(_Pending(item.wanted, item.kind, item.digest, live, read=True))
        writes = [self._io.submit(self._write, item, spec, owner, outcome) for item in checked]
        failed: KubeError | None = None
        for item, write in zip(checked, writes, strict=True):
            try:
                applied = write.result()
            except KubeError as error:  # the others are written and remembered all the same
                failed = failed or error
                continue
            if item.kind == render.DEPLOYMENT and item.name == owner.name:
                deployment = applied
        if failed is not None:
            raise failed
        for (kind, name), owned in zip(unwanted, owned_unwanted, strict=True):
            self._applied.pop((owner.uid, kind.kind, name), None)
            seen = owned.result()
            if seen is not None and self._delete_unwanted(kind, owner, name, seen):
                metrics.WRITES.labels(kind=kind.kind, verb="delete").inc()
                outcome.deleted.append(kind.kind if name == owner.name else f"{kind.kind}/{name}")
        self._bind_reviewer(spec, owner, outcome, full=full)
        if frozen is not None and move is not None:
            deployment = frozen
            target = move.stable_replicas
            if target is not None and (frozen.get("spec") or {}).get("replicas") != target:
                deployment = self.kube.scale(owner.namespace, owner.name, target)
                self.children.observe(deployment)
                metrics.WRITES.labels(kind=render.DEPLOYMENT.kind, verb="scale").inc()
                outcome.changed.append("Deployment/scale")
        return deployment

    def _bind_reviewer(
        self, spec: api.ModelDeploymentSpec, owner: render.Owner, outcome: Outcome, *, full: bool
    ) -> None:
        """With auth on, the ClusterRoleBinding that lets the model pods review tokens; removed
        when auth is turned off (or the resource deleted: unbind_reviewer)."""
        key = (
            owner.uid,
            render.REVIEWER_BINDING.kind,
            access.reviewer_binding_name(owner.namespace, owner.name),
        )
        if access.auth_on(spec):
            binding = render.render_reviewer_binding(owner)
            digest = _digest(binding)
            if not full and self._applied.get(key) == (digest, ""):
                return
            self.kube.apply(binding)
            metrics.WRITES.labels(kind=render.REVIEWER_BINDING.kind, verb="apply").inc()
            self._applied[key] = (digest, "")
        elif self._applied.pop(key, None) is not None and self.unbind_reviewer(
            owner.namespace, owner.name
        ):
            outcome.deleted.append(render.REVIEWER_BINDING.kind)

    def unbind_reviewer(self, namespace: str, name: str) -> bool:
        """Deletes a resource's token-review binding; False when there was none."""
        deleted = self.kube.delete(
            render.REVIEWER_BINDING, "", access.reviewer_binding_name(namespace, name)
        )
        if deleted:
            metrics.WRITES.labels(kind=render.REVIEWER_BINDING.kind, verb="delete").inc()
        return deleted

    def _plan_canary(
        self,
        move: canary.Move,
        *,
        spec: api.ModelDeploymentSpec,
        owner: render.Owner,
        outcome: Outcome,
        wanted: list[Obj],
        unwanted: list[tuple[render.ChildKind, str]],
    ) -> Obj | None:
        """Adjust the children to the canary's move (in place); the stable Deployment when it
        is frozen (kept on its template, only scaled)."""
        frozen = None
        if not move.apply_stable:
            wanted[:] = [obj for obj in wanted if obj["kind"] != render.DEPLOYMENT.kind]
            frozen = self._deployment(owner, owner.name, full=False)
        if move.canary_replicas is not None:
            wanted.append(
                render.render_deployment(
                    owner, spec, self.settings, track=canary.CANARY, replicas=move.canary_replicas
                )
            )
        elif move.delete_canary:
            unwanted.append((render.DEPLOYMENT, canary.canary_name(owner.name)))
        outcome.requeue_after = move.requeue_after
        outcome.events = move.events
        return frozen

    def _differing(
        self, wanted: list[Obj], owner: render.Owner, *, full: bool
    ) -> tuple[list[_Pending], Obj | None]:
        """Children whose rendered form or live fingerprint differ from the last apply (none,
        on an idle resource), and the live Deployment when it was read and is unchanged."""
        pending: list[_Pending] = []
        deployment: Obj | None = None
        kinds = [(render.child_kind(obj["kind"]), obj["metadata"]["name"]) for obj in wanted]
        found = list(
            self._io.map(lambda k: self._live_fingerprint(k[0], owner, k[1], full=full), kinds)
        )
        for obj, (kind, name), (live_fp, live, read) in zip(wanted, kinds, found, strict=True):
            digest = _digest(obj)
            applied = self._applied.get((owner.uid, kind.kind, name))
            if live_fp is not None and applied == (digest, live_fp):
                if kind == render.DEPLOYMENT and name == owner.name:
                    deployment = live
                continue
            pending.append(_Pending(obj, kind, digest, live, read))
        return pending, deployment

    def _write(
        self, item: _Pending, spec: api.ModelDeploymentSpec, owner: render.Owner, outcome: Outcome
    ) -> Obj:
        live = item.live
        if (
            item.kind == render.DEPLOYMENT
            and item.name == owner.name
            and live is not None
            and spec.autoscaling is not None
            and not spec.suspend
            and _owns_replicas(live, self.settings.field_manager)
        ):
            current = int((live.get("spec") or {}).get("replicas") or 0)
            self.kube.hand_over_replicas(
                owner.namespace, owner.name, spec.autoscaling.bound(current)
            )
            metrics.WRITES.labels(kind=item.kind.kind, verb="apply-handoff").inc()
        applied = self.kube.apply(item.wanted)
        metrics.WRITES.labels(kind=item.kind.kind, verb="apply").inc()
        self.children.observe(applied)
        after = fingerprint(applied)
        if live is None or fingerprint(live) != after:
            outcome.changed.append(
                item.kind.kind if item.name == owner.name else f"{item.kind.kind}/{item.name}"
            )
        self._applied[(owner.uid, item.kind.kind, item.name)] = (item.digest, after)
        return applied

    def _owned_unwanted(
        self, kind: render.ChildKind, owner: render.Owner, name: str, *, read: bool
    ) -> tuple[str, str | None] | None:
        """The uid and resourceVersion of a child that must go, if this resource controls it,
        as preconditions of its deletion.

        Read from the API server (``read``), its uid alone: the object's controller writes its
        status every few seconds (an HPA's, a PDB's), which moves the resourceVersion but not
        the ownership just read. Else as the watch cache has it, with the resourceVersion too:
        a stale cache never deletes what changed since (it is read again)."""
        if read:
            existing = self.kube.get(kind, owner.namespace, name)
            if existing is None or controller_uid(existing) != owner.uid:
                return None
            return existing["metadata"]["uid"], None
        cached = self.children.get(kind, owner.namespace, name)
        if cached is None or cached.controller != owner.uid:
            return None
        return cached.uid, cached.resource_version

    def _delete_unwanted(
        self, kind: render.ChildKind, owner: render.Owner, name: str, seen: tuple[str, str | None]
    ) -> bool:
        """Delete a child that must go, as it was seen; if it changed since, read it again and
        delete it only if this resource still controls it."""
        try:
            return self.kube.delete(
                kind, owner.namespace, name, uid=seen[0], resource_version=seen[1]
            )
        except KubeError as error:
            if error.status != 409:
                raise
        fresh = self._owned_unwanted(kind, owner, name, read=True)
        if fresh is None:
            return False
        return self.kube.delete(
            kind, owner.namespace, name, uid=fresh[0], resource_version=fresh[1]
        )


class _PodMetrics:
    """The /metrics texts of a resource's ready pods, read concurrently once per pass and only
    when asked for: the canary analysis and the drift check judge the same reading."""

    def __init__(
        self, targets: Callable[[], list[tuple[str, str]]], io: ThreadPoolExecutor
    ) -> None:
        self._targets, self._io = targets, io  # (track, metrics URL) of the ready pods
        self._texts: list[tuple[str, str]] | None = None

    def texts(self) -> list[tuple[str, str]]:
        """(track, metrics text) of each ready pod that answered (the others count as silent:
        the canary's gates need ``minRequests`` before they judge)."""
        if self._texts is None:

            def read(target: tuple[str, str]) -> tuple[str, str | None]:
                track, url = target
                try:
                    return track, scrape.fetch(url)
                except (OSError, ValueError) as error:
                    logger.info("cannot read the metrics at %s: %s", url, error)
                    return track, None

            found = self._io.map(read, self._targets())
            self._texts = [(track, text) for track, text in found if text is not None]
        return self._texts


def _readings(pod_metrics: _PodMetrics) -> dict[str, scrape.Counters]:
    """Both versions' counters, summed over their ready pods."""
    found = [(track, scrape.counters(text)) for track, text in pod_metrics.texts()]
    return {
        track: scrape.total(counters for t, counters in found if t == track)
        for track in (canary.STABLE, canary.CANARY)
    }


@dataclass(frozen=True)
class _Pending:
    """A child to write: as rendered, its digest, and the live object (None: absent, when
    ``read``; unknown otherwise)."""

    wanted: Obj
    kind: render.ChildKind
    digest: str
    live: Obj | None
    read: bool

    @property
    def name(self) -> str:
        name: str = self.wanted["metadata"]["name"]
        return name
