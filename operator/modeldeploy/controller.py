"""Watch events in, reconciles out: the parents' cache, the work queue, resync and Events.

The kopf handlers only hand raw watch events to ``Controller`` on the event loop; reconciles run
in worker threads (``asyncio.to_thread``), one per resource at a time, with backoff on failure:
- a ModelDeployment's creation or spec change (generation): a pass from the watch cache,
  whose writes carry preconditions (a new resource costs its creates and one status write);
- its first listing (the operator starts, or its watch restarted): a full pass that reads
  every child from the API server;
- a child's event: a pass from the cache (no read at all for an idle resource);
- a failure (an API error, a refused child, a name conflict): retried with exponential,
  jittered backoff until the children match; permanent refusals no sooner than
  ``PERMANENT_RETRY_SECONDS``;
- an unsettled resource (rolling out, crash-looping pods): looked at again after 5 s to 60 s;
- every resource: a full resync about every ``resync_seconds`` (jittered), which repairs what a
  missed watch event hid and writes nothing when nothing differs;
- the token-review ClusterRoleBindings (cluster-scoped, so not garbage-collected): every
  ``resync_seconds`` those no live resource wants are deleted (their resource went while the
  operator was down).
Nothing is remembered for a resource once its DELETED event arrives.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from modeldeploy import api, children, metrics
from modeldeploy.kube import KubeError
from modeldeploy.reconcile import Outcome, Reconciler
from modeldeploy.workqueue import Backoff, Result, WorkQueue, jittered

logger = logging.getLogger("modeldeploy.controller")

Obj = dict[str, Any]
Key = tuple[str, str]  # namespace, name

COMPONENT = "modeldeploy-operator"
PERMANENT_RETRY_SECONDS = 15.0
RECHECK_FIRST, RECHECK_LONGEST = 5.0, 60.0
SETTLED_PHASES = {api.Phase.READY, api.Phase.SUSPENDED}
# Pods are listed (to explain a rollout that is stuck) once a resource has been unsettled this
# long: a rollout that is merely starting needs no list per Deployment event.
INSPECT_PODS_AFTER = RECHECK_FIRST


def _key(obj: Obj) -> Key:
    meta = obj.get("metadata") or {}
    return meta.get("namespace", ""), meta.get("name", "")


def _trimmed(body: Obj) -> Obj:
    """What a pass needs of a ModelDeployment (managedFields are most of its bytes)."""
    meta = dict(body.get("metadata") or {})
    meta.pop("managedFields", None)
    return {"metadata": meta, "spec": body.get("spec") or {}, "status": body.get("status") or {}}


class Controller:
    """One per operator process; every method but ``_pass`` runs on the event loop."""

    def __init__(self, reconciler: Reconciler, *, workers: int = 4, resync_seconds: float = 600.0):
        self.reconciler = reconciler
        self.resync_seconds = resync_seconds
        self.queue: WorkQueue[Key] = WorkQueue(
            self._process, workers=workers, backoff=Backoff(first=1.0, cap=300.0)
        )
        # Reconciles block on the synchronous client: threads of their own, one per worker.
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="reconcile")
        self._parents: dict[Key, Obj] = {}
        self._full: set[Key] = set()
        # Keys whose cached body a watch event has just delivered: their next full pass needs
        # no fresh read (resyncs and retries do).
        self._from_event: set[Key] = set()
        self._last_full: dict[Key, float] = {}
        self._unsettled: dict[Key, int] = {}
        self._unsettled_since: dict[Key, float] = {}
        self._sweeper: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.queue.start()
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_bindings())

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        await self.queue.stop()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _sweep_bindings(self) -> None:
        """Every resync period, from start-up on: the token-review bindings no live resource
        wants go (their resource was deleted while no operator ran)."""
        loop = asyncio.get_running_loop()
        namespaces = self.reconciler.settings.namespaces
        while True:
            try:
                swept = await loop.run_in_executor(
                    self._executor, self.reconciler.sweep_bindings, namespaces
                )
                for name in swept:
                    logger.info("deleted the orphaned token-review binding %s", name)
            except KubeError as error:
                if error.status == 403:  # an install without auth: Kubernetes (rbac-auth.yaml)
                    logger.info("no token-review bindings to sweep: %s", error.message)
                    return
                logger.warning("cannot sweep the token-review bindings: %s", error.message)
            await asyncio.sleep(jittered(self.resync_seconds))

    # --- watch events ----------------------------------------------------------------------

    def parent_event(self, event_type: str | None, body: Obj) -> None:
        """A ModelDeployment was listed, added, modified or deleted."""
        metrics.WATCH_EVENTS.labels(kind=api.KIND).inc()
        key = _key(body)
        if event_type == "DELETED":
            self._drop(key, body["metadata"].get("uid", ""))
            if ((body.get("spec") or {}).get("auth") or {}).get("mode") == "Kubernetes":
                # Cluster-scoped, so garbage collection cannot remove it with the resource.
                self._executor.submit(self._unbind_reviewer, *key)
            self.report_memory()
            return
        before = self._parents.get(key)
        self._parents[key] = _trimmed(body)
        meta, old = body.get("metadata") or {}, (before or {}).get("metadata") or {}
        if (
            before is None
            or old.get("uid") != meta.get("uid")
            or old.get("generation") != meta.get("generation")
            or bool(old.get("deletionTimestamp")) != bool(meta.get("deletionTimestamp"))
        ):
            # Status-only and metadata-only changes (the operator's own status writes among
            # them) need no pass.
            if event_type is None:  # listed: the children's watches may not have caught up
                self._full.add(key)
            self._last_full.setdefault(key, time.monotonic())
            self._from_event.add(key)
            self.queue.add(key)

    def child_event(self, event_type: str | None, body: Obj) -> None:
        """A child (Deployment, Service, ...) changed: a pass from the cache if it matters."""
        metrics.WATCH_EVENTS.labels(kind=str(body.get("kind"))).inc()
        owner = children.owner_name(body)
        if owner is None:
            return
        key = (body["metadata"].get("namespace", ""), owner)
        deleted = event_type == "DELETED"
        needs_pass = self.reconciler.child_needs_pass(body, deleted=deleted)
        if needs_pass and key in self._parents:
            self.queue.add(key)
        if deleted:
            self.report_memory()

    def _unbind_reviewer(self, namespace: str, name: str) -> None:
        try:
            self.reconciler.unbind_reviewer(namespace, name)
        except KubeError as error:
            logger.warning("%s/%s: the token-review binding stays: %s", namespace, name, error)

    def _drop(self, key: Key, uid: str) -> None:
        self._parents.pop(key, None)
        self._full.discard(key)
        self._from_event.discard(key)
        self._last_full.pop(key, None)
        self._unsettled.pop(key, None)
        self._unsettled_since.pop(key, None)
        self.queue.forget(key)
        self.reconciler.forget(uid)

    def report_memory(self) -> dict[str, int]:
        """Sizes of everything held per object, also exported as a gauge."""
        sizes = {
            "parents": len(self._parents),
            "children": len(self.reconciler.children),
            "queue": len(self.queue),
            **self.reconciler.remembered(),
        }
        for store, size in sizes.items():
            metrics.REMEMBERED.labels(store=store).set(size)
        return sizes

    # --- passes ----------------------------------------------------------------------------

    async def _process(self, key: Key) -> Result:
        body = self._parents.get(key)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return Result()  # gone, or being garbage-collected with its children
        now = time.monotonic()
        last_full = self._last_full.setdefault(key, now)
        full = key in self._full or now - last_full >= self.resync_seconds
        self._full.discard(key)
        from_event = key in self._from_event
        self._from_event.discard(key)
        trigger = "full" if full else "spec" if from_event else "child"
        inspect_pods = now - self._unsettled_since.get(key, now) >= INSPECT_PODS_AFTER
        loop = asyncio.get_running_loop()
        if full and not from_event:
            # A resync or a retry starts from the API server's copy: a watch that restarted
            # (kopf re-lists, it does not replay) can have missed a deletion or a change.
            try:
                fresh = await loop.run_in_executor(
                    self._executor, self.reconciler.kube.get_model_deployment, *key
                )
            except KubeError as error:
                logger.warning("cannot read %s/%s: %s", *key, error.message)
                self._full.add(key)
                return Result(failed=True, retry_at_least=error.retry_after)
            uid = body["metadata"].get("uid", "")
            if fresh is None or fresh["metadata"].get("uid") != uid:
                logger.info("%s/%s is gone (a missed DELETED event): forgetting it", *key)
                self._drop(key, uid)
                if fresh is not None:
                    self.parent_event("ADDED", fresh)
                self.report_memory()
                return Result()
            body = self._parents[key] = _trimmed(fresh)
        outcome: Outcome | KubeError
        try:
            outcome = await loop.run_in_executor(
                self._executor, self._pass, body, full, trigger, inspect_pods
            )
        except KubeError as error:
            outcome = error
        uid = body["metadata"].get("uid", "")
        current = self._parents.get(key)
        if current is None or current["metadata"].get("uid") != uid:
            # Deleted while the pass ran (its writes may have failed on that, or landed after
            # the DELETED event dropped the resource's memory): forget it now, for good.
            self.reconciler.forget(uid)
            self.report_memory()
            return Result()
        if isinstance(outcome, KubeError):
            logger.warning("reconcile of %s/%s failed: %s", *key, outcome.message)
            self._full.add(key)
            return Result(failed=True, retry_at_least=outcome.retry_after)
        if full:
            self._last_full[key] = now
        self.report_memory()
        return self._next(key, outcome)

    def _next(self, key: Key, outcome: Outcome) -> Result:
        """When to look at the resource again after a pass."""
        if outcome.apply_error is not None or outcome.name_conflict:
            self._full.add(key)
            error = outcome.apply_error
            permanent = outcome.name_conflict or (error is not None and error.permanent)
            floor = PERMANENT_RETRY_SECONDS if permanent else 0.0
            if error is not None:
                floor = max(floor, error.retry_after)
            return Result(failed=True, retry_at_least=floor)
        if outcome.requeue_after is not None:  # a canary: its own clock
            return Result(requeue_after=outcome.requeue_after)
        if outcome.phase in SETTLED_PHASES:
            self._unsettled.pop(key, None)
            self._unsettled_since.pop(key, None)
            return Result(requeue_after=jittered(self.resync_seconds))
        self._unsettled_since.setdefault(key, time.monotonic())
        checks = self._unsettled.get(key, 0) + 1
        self._unsettled[key] = checks
        return Result(requeue_after=min(RECHECK_LONGEST, RECHECK_FIRST * 2.0 ** (checks - 1)))

    def _pass(self, body: Obj, full: bool, trigger: str, inspect_pods: bool) -> Outcome:
        """One reconcile and its Events (in a worker thread: no kopf context needed)."""
        outcome = self.reconciler.reconcile(
            body, full=full, trigger=trigger, inspect_pods=inspect_pods
        )
        meta = body["metadata"]
        involved = {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND,
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
        }
        events = [
            (
                "Warning" if transition.warning else "Normal",
                str(transition.reason)
                if transition.type == api.ConditionType.READY
                else f"{transition.type}{transition.status}",
                f"{transition.type}={transition.status}: {transition.message}",
            )
            for transition in outcome.transitions
        ]
        events += [(event.type, event.reason, event.message) for event in outcome.events]
        for type_, reason, message in events:
            try:
                self.reconciler.kube.post_event(
                    involved, type_=type_, reason=reason, message=message, component=COMPONENT
                )
            except KubeError as error:
                logger.warning("cannot post an Event for %s/%s: %s", *_key(body), error.message)
        return outcome
