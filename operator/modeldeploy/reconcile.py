"""Reconcile orchestration: parse, render, apply, observe, compute status, write it if it changed.

Knows the Kubernetes API only through ``kube.Kube`` and kopf not at all, so tests can drive it
directly against a real API server.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from modeldeploy import api, kube, metrics, render, status
from modeldeploy.kube import Kube
from modeldeploy.settings import Settings

logger = logging.getLogger("modeldeploy.reconcile")

Obj = dict[str, Any]


def utcnow() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def describe_validation_error(error: ValidationError) -> str:
    """One line per problem, each naming the field as a user writes it (spec.model.uri)."""
    lines = []
    for problem in error.errors():
        where = ".".join(str(part) for part in ("spec", *problem["loc"]))
        lines.append(f"{where}: {problem['msg']}")
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
    """What one reconcile did, for logs, metrics and Events."""

    name: str
    namespace: str
    phase: str
    changed: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    status_written: bool = False
    transitions: list[status.Transition] = field(default_factory=list)
    # A child's name is taken (NameConflict): nothing announces when it is free again, so the
    # caller should try the apply again later.
    retry_apply: bool = False

    @property
    def did_something(self) -> bool:
        return bool(self.changed or self.deleted or self.status_written)


def _fingerprint(obj: Obj) -> str:
    """What changes when a child's spec changes: generation where the kind has one."""
    meta = obj.get("metadata") or {}
    generation = meta.get("generation")
    return f"g{generation}" if generation else f"rv{meta.get('resourceVersion')}"


def _owns_replicas(deployment: Obj, manager: str) -> bool:
    for entry in (deployment.get("metadata") or {}).get("managedFields") or []:
        if entry.get("manager") == manager and entry.get("operation") == "Apply":
            spec = (entry.get("fieldsV1") or {}).get("f:spec") or {}
            if "f:replicas" in spec:
                return True
    return False


def _is_controlled_by(obj: Obj, uid: str) -> bool:
    return any(
        ref.get("uid") == uid and ref.get("controller")
        for ref in (obj.get("metadata") or {}).get("ownerReferences") or []
    )


class Reconciler:
    """Brings one ModelDeployment's children and status in line with its spec."""

    def __init__(self, kube: Kube, settings: Settings, clock: Callable[[], str] = utcnow):
        self.kube = kube
        self.settings = settings
        self.clock = clock
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        # Fingerprint of each child as the operator last wrote or saw it: a watch event whose
        # fingerprint matches is status noise; one that differs is drift to correct.
        self._seen: dict[str, str] = {}
        self._phases: dict[str, str] = {}
        # The status this operator last wrote, per resource: it is the only status writer, and
        # a body handed in by a watch event can predate that write.
        self._written: dict[str, Obj] = {}
        # Why the last apply of a resource's children failed, until one succeeds: status-only
        # passes (child events) must not report Ready while a child could not be written.
        self._apply_failures: dict[str, status.ApplyFailure] = {}
        # uid of each child this operator applied, per resource and kind: a child still in
        # _seen (no DELETED event since) is known to be its own, so needs no ownership read.
        self._children: dict[str, dict[str, str]] = {}

    @contextmanager
    def _lock(self, uid: str) -> Iterator[None]:
        with self._locks_guard:
            lock = self._locks.setdefault(uid, threading.Lock())
        with lock:
            yield

    def forget(self, uid: str) -> None:
        """Drop per-resource memory after the ModelDeployment is gone."""
        with self._locks_guard:
            self._locks.pop(uid, None)
        self._written.pop(uid, None)
        self._apply_failures.pop(uid, None)
        self._children.pop(uid, None)
        if self._phases.pop(uid, None) is not None:
            self._update_phase_gauge()

    def child_drifted(self, child: Obj, event_type: str | None) -> bool:
        """Whether a watch event on a child needs the children re-applied (not just status)."""
        uid = (child.get("metadata") or {}).get("uid", "")
        if event_type == "DELETED":
            self._seen.pop(uid, None)
            return True
        return self._seen.get(uid) != _fingerprint(child)

    def reconcile(
        self, body: Obj, *, apply_children: bool = True, trigger: str = "spec"
    ) -> Outcome:
        """One pass. Raises ApiException on API failures (the caller retries)."""
        started = time.monotonic()
        meta = body["metadata"]
        try:
            with self._lock(meta["uid"]):
                outcome = self._reconcile(body, apply_children=apply_children)
        except Exception:
            metrics.RECONCILES.labels(trigger=trigger, result="error").inc()
            raise
        finally:
            metrics.RECONCILE_SECONDS.labels(trigger=trigger).observe(time.monotonic() - started)
        metrics.RECONCILES.labels(
            trigger=trigger, result="changed" if outcome.did_something else "unchanged"
        ).inc()
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
        counts: dict[str, int] = dict.fromkeys(
            ("Pending", "Progressing", "Ready", "Degraded", "Failed", "Suspended"), 0
        )
        for phase in list(self._phases.values()):
            counts[phase] = counts.get(phase, 0) + 1
        for phase, count in counts.items():
            metrics.RESOURCES.labels(phase=phase).set(count)

    def _reconcile(self, body: Obj, *, apply_children: bool) -> Outcome:
        meta = body["metadata"]
        name, namespace, uid = meta["name"], meta["namespace"], meta["uid"]
        owner = render.Owner(name=name, namespace=namespace, uid=uid)
        outcome = Outcome(name=name, namespace=namespace, phase="Pending")

        spec: api.ModelDeploymentSpec | None = None
        spec_error: str | None = None
        try:
            spec = api.parse_spec(body.get("spec") or {})
        except ValidationError as error:
            spec_error = describe_validation_error(error)

        deployment: Obj | None = None
        refused: ApiException | None = None
        if spec is not None and apply_children:
            try:
                deployment = self._apply_children(body, spec, owner, outcome)
                self._apply_failures.pop(uid, None)
            except ApiException as error:
                refused = error
                self._apply_failures[uid] = status.ApplyFailure(
                    permanent=400 <= (error.status or 0) < 500 and error.status not in (409, 429),
                    message=kube.api_message(error),
                )
                deployment = self.kube.get(render.DEPLOYMENT, namespace, name)
            except NameConflictError as error:
                self._apply_failures[uid] = status.ApplyFailure(
                    permanent=True, message=str(error), reason="NameConflict"
                )
                deployment = self.kube.get(render.DEPLOYMENT, namespace, name)
        elif spec is not None:
            deployment = self.kube.get(render.DEPLOYMENT, namespace, name)
        if deployment is not None and not _is_controlled_by(deployment, uid):
            deployment = None  # someone else's: its rollout says nothing about this resource

        pod_failure = None
        if deployment is not None and not self._rolled_out(deployment):
            pods = self.kube.list_pods(namespace, render.selector_string(owner))
            pod_failure = status.summarize_pod_failure(pods)

        observed = status.Observed(
            generation=int(meta.get("generation") or 0),
            spec=spec,
            spec_error=spec_error,
            deployment=deployment,
            pod_failure=pod_failure,
            selector=render.selector_string(owner),
            url=render.service_url(owner, self.settings.cluster_domain),
            apply_failure=self._apply_failures.get(uid),
        )
        outcome.retry_apply = (
            observed.apply_failure is not None and observed.apply_failure.reason == "NameConflict"
        )
        written = self._written.get(uid)
        previous = written if written is not None else body.get("status") or {}
        new_status, transitions = status.compute_status(observed, previous, self.clock())
        outcome.phase = new_status["phase"]
        if status.status_differs(previous, new_status):
            self.kube.apply_status(namespace, name, new_status)
            self._written[uid] = new_status
            metrics.WRITES.labels(kind=api.KIND, verb="apply-status").inc()
            outcome.status_written = True
            outcome.transitions = transitions
        if refused is not None:
            raise refused  # status says why; the caller retries
        return outcome

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

    def _refuse_foreign(
        self, children: render.Children, owner: render.Owner, live: Obj | None
    ) -> None:
        """Raise NameConflictError before writing anything if a child's name is someone else's.

        Server-side apply would merge into such an object and take it over (a user's own
        Service would start selecting the model pods). A child this operator applied and has
        not seen deleted since needs no read.
        """
        known = self._children.get(owner.uid, {})
        for wanted in children.wanted:
            kind = render.child_kind(wanted["kind"])
            if kind == render.DEPLOYMENT:
                existing = live
            elif known.get(kind.kind) in self._seen:
                continue
            else:
                existing = self.kube.get(kind, owner.namespace, owner.name)
            if existing is not None and not _is_controlled_by(existing, owner.uid):
                raise NameConflictError(kind.kind, owner.namespace, owner.name)

    def _apply_children(
        self, body: Obj, spec: api.ModelDeploymentSpec, owner: render.Owner, outcome: Outcome
    ) -> Obj | None:
        children = render.render_children(body, spec, self.settings)
        live = self.kube.get(render.DEPLOYMENT, owner.namespace, owner.name)
        self._refuse_foreign(children, owner, live)
        if (
            live is not None
            and spec.autoscaling is not None
            and not spec.suspend
            and _owns_replicas(live, self.settings.field_manager)
        ):
            current = int((live.get("spec") or {}).get("replicas") or 0)
            keep = spec.autoscaling.bound(current)
            self.kube.hand_over_replicas(owner.namespace, owner.name, keep)
            metrics.WRITES.labels(kind="Deployment", verb="apply-handoff").inc()

        deployment: Obj | None = None
        for wanted in children.wanted:
            applied = self.kube.apply(wanted)
            kind = wanted["kind"]
            metrics.WRITES.labels(kind=kind, verb="apply").inc()
            uid = applied["metadata"]["uid"]
            before = (
                _fingerprint(live)
                if kind == "Deployment" and live is not None
                else self._seen.get(uid)
            )
            after = _fingerprint(applied)
            if before != after:
                outcome.changed.append(kind)
            self._seen[uid] = after
            self._children.setdefault(owner.uid, {})[kind] = uid
            if kind == "Deployment":
                deployment = applied
        for kind in children.unwanted:
            existing = self.kube.get(kind, owner.namespace, owner.name)
            if (
                existing is not None
                and _is_controlled_by(existing, owner.uid)
                and self.kube.delete(kind, owner.namespace, owner.name)
            ):
                metrics.WRITES.labels(kind=kind.kind, verb="delete").inc()
                outcome.deleted.append(kind.kind)
        return deployment
