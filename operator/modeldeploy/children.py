"""The children as the operator knows them, and the writes that carry that knowledge's
preconditions.

``ChildCache`` mirrors the children as their watches deliver them (an informer's cache), so a
child event costs no read and ownership is decided without one. Every write carries the
precondition that makes a stale cache harmless (``ChildWriter``):
- a child the cache does not know is created: the API server refuses it if the name is taken,
  by anyone (the watches see only the operator's labelled objects);
- a child the cache knows as the resource's is applied with its uid: refused if the object
  went or was replaced since;
- a child that must go is deleted with its uid and resourceVersion;
- on a refusal, the child is read once and the decision made again from what the server says.
A child that a create made has its fields recorded as an update; its first apply makes them
the apply's (``Kube.own_as_applied``), or that apply could not remove what it no longer sets.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from modeldeploy import api, canary, metrics, render
from modeldeploy.kube import Kube, KubeError

logger = logging.getLogger("modeldeploy.children")

Obj = dict[str, Any]
ChildKey = tuple[str, str, str]  # kind, namespace, name


class NameConflictError(Exception):
    """A child's name is taken by an object this ModelDeployment does not control."""

    def __init__(self, kind: str, namespace: str, name: str):
        super().__init__(
            f"a {kind} named {name} already exists in namespace {namespace} and is not "
            "controlled by this ModelDeployment; the operator does not take it over: delete or "
            "rename it (or this ModelDeployment)"
        )


def fingerprint(obj: Obj) -> str:
    """What changes when a child's spec changes: generation where the kind has one."""
    meta = obj.get("metadata") or {}
    generation = meta.get("generation")
    return f"g{generation}" if generation else f"rv{meta.get('resourceVersion')}"


def digest(obj: Obj) -> str:
    """What identifies a rendered child: a change of it is a write."""
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


def _entries(obj: Obj, manager: str) -> list[tuple[int, Obj]]:
    """The field manager's managedFields entries of the object itself (not its status)."""
    return [
        (index, entry)
        for index, entry in enumerate((obj.get("metadata") or {}).get("managedFields") or [])
        if entry.get("manager") == manager and not entry.get("subresource")
    ]


def _created_entry(obj: Obj, manager: str) -> int | None:
    """The index of the ``Update`` entry the operator's create left, while it has never
    applied to the object (its first apply turns that entry into an ``Apply`` one)."""
    found = _entries(obj, manager)
    if any(entry.get("operation") == "Apply" for _, entry in found):
        return None
    return next((index for index, entry in found if entry.get("operation") == "Update"), None)


def _owns_replicas(obj: Obj, manager: str) -> bool:
    return any(
        "f:replicas" in ((entry.get("fieldsV1") or {}).get("f:spec") or {})
        for _, entry in _entries(obj, manager)
    )


@dataclass(frozen=True)
class CachedChild:
    """A child as the last watch event (or read, or write) showed it."""

    uid: str
    fingerprint: str
    controller: str | None
    deployment: Obj | None = None  # Deployments keep what status and the canary need
    resource_version: str = ""
    created_entry: int | None = None  # see _created_entry
    owns_replicas: bool = False  # the operator owns Deployment.spec.replicas


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

    def __init__(self, field_manager: str) -> None:
        self._manager = field_manager
        self._items: dict[ChildKey, CachedChild] = {}
        self._guard = threading.Lock()

    def observe(self, obj: Obj, *, deleted: bool = False) -> CachedChild | None:
        """Record one watch event (or an object read or written); the entry now held."""
        meta = obj.get("metadata") or {}
        key = (str(obj.get("kind")), meta.get("namespace", ""), meta.get("name", ""))
        with self._guard:
            if deleted:
                before = self._items.get(key)
                if before is not None and before.uid == meta.get("uid"):
                    del self._items[key]
                return None
            is_deployment = obj.get("kind") == render.DEPLOYMENT.kind
            entry = CachedChild(
                uid=meta.get("uid", ""),
                fingerprint=fingerprint(obj),
                controller=controller_uid(obj),
                deployment=_status_view(obj) if is_deployment else None,
                resource_version=meta.get("resourceVersion", ""),
                created_entry=_created_entry(obj, self._manager),
                owns_replicas=is_deployment and _owns_replicas(obj, self._manager),
            )
            self._items[key] = entry
        return entry

    def get(self, kind: render.ChildKind, namespace: str, name: str) -> CachedChild | None:
        with self._guard:
            return self._items.get((kind.kind, namespace, name))

    def forget(self, kind: render.ChildKind, namespace: str, name: str) -> None:
        with self._guard:
            self._items.pop((kind.kind, namespace, name), None)

    def __len__(self) -> int:
        return len(self._items)


def _label(kind: render.ChildKind, owner: render.Owner, name: str) -> str:
    """How a child is named in logs and outcomes: its kind, and its name if not the owner's."""
    return kind.kind if name == owner.name else f"{kind.kind}/{name}"


@dataclass
class Written:
    """What the writes of one pass changed and deleted (as kinds, or kind/name)."""

    changed: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    created: list[tuple[render.ChildKind, str, str]] = field(default_factory=list)  # with uid


class ChildWriter:
    """Writes a resource's children from the cache's knowledge, with its preconditions, and
    remembers what it wrote: a child whose rendered form and live fingerprint are unchanged
    since is not written again (an idle resource costs nothing)."""

    def __init__(self, kube: Kube, cache: ChildCache, io: ThreadPoolExecutor) -> None:
        self.kube = kube
        self.cache = cache
        self._io = io  # the writes of a pass go out together: one round trip, not one each
        # (resource uid, kind, name) -> (digest of the rendered child, its fingerprint after)
        self._applied: dict[tuple[str, str, str], tuple[str, str]] = {}

    def forget(self, uid: str) -> None:
        for key in [key for key in self._applied if key[0] == uid]:
            del self._applied[key]

    def __len__(self) -> int:
        return len(self._applied)

    def differs_from_written(self, child: Obj) -> bool:
        """Whether a child, as a watch event shows it, is not what was last written (someone
        else edited it, or it was never written by this process)."""
        owner = controller_uid(child)
        name = (child.get("metadata") or {}).get("name", "")
        applied = self._applied.get((owner or "", str(child.get("kind")), name))
        return applied is None or applied[1] != fingerprint(child)

    def written_as(self, uid: str, kind: render.ChildKind, name: str) -> str | None:
        """The digest of what was last written of a child whose fingerprint is not tracked
        (the cluster-scoped token-review binding)."""
        applied = self._applied.get((uid, kind.kind, name))
        return applied[0] if applied is not None else None

    def remember(self, uid: str, kind: render.ChildKind, name: str, digest: str) -> None:
        self._applied[(uid, kind.kind, name)] = (digest, "")

    def drop(self, uid: str, kind: render.ChildKind, name: str) -> bool:
        return self._applied.pop((uid, kind.kind, name), None) is not None

    # --- reads -----------------------------------------------------------------------------

    def read_all(self, owner: render.Owner, *, with_canary: bool) -> None:
        """Every child a resource may have, read from the API server into the cache (a full
        pass: a missed watch event hides nothing after this); the canary's Deployment only
        ``with_canary`` (the strategy or the status names one)."""
        names = [(kind, owner.name) for kind in render.CHILD_KINDS]
        if with_canary or self.cache.get(
            render.DEPLOYMENT, owner.namespace, canary.canary_name(owner.name)
        ):
            names.append((render.DEPLOYMENT, canary.canary_name(owner.name)))
        for _ in self._io.map(lambda k: self.read(k[0], owner.namespace, k[1]), names):
            pass  # each read lands in the cache

    def read(self, kind: render.ChildKind, namespace: str, name: str) -> CachedChild | None:
        """One child from the API server, into the cache."""
        live = self.kube.get(kind, namespace, name)
        if live is None:
            self.cache.forget(kind, namespace, name)
            return None
        return self.cache.observe(live)

    def deployment(self, owner: render.Owner, name: str) -> Obj | None:
        """A Deployment of this resource as last seen (None: absent, or someone else's)."""
        cached = self.cache.get(render.DEPLOYMENT, owner.namespace, name)
        if cached is None or cached.controller != owner.uid:
            return None
        return cached.deployment

    # --- writes ----------------------------------------------------------------------------

    def write(
        self,
        wanted: list[Obj],
        unwanted: list[tuple[render.ChildKind, str]],
        spec: api.ModelDeploymentSpec,
        owner: render.Owner,
        *,
        fresh: bool = False,
    ) -> Written:
        """Write the children that differ from the last write and delete the unwanted ones,
        concurrently. ``fresh``: the cache was just read from the API server (a full pass).
        Raises the first KubeError or NameConflictError once all are done."""
        written = Written()
        pending: list[tuple[Obj, str]] = []
        for obj in wanted:
            kind, name = render.child_kind(obj["kind"]), obj["metadata"]["name"]
            hashed = digest(obj)
            cached = self.cache.get(kind, owner.namespace, name)
            if cached is not None and cached.controller != owner.uid:
                # A stale cache can say this too: a full pass (the retry) reads it.
                raise NameConflictError(kind.kind, owner.namespace, name)
            if cached is not None and self._applied.get((owner.uid, kind.kind, name)) == (
                hashed,
                cached.fingerprint,
            ):
                continue
            pending.append((obj, hashed))
        # All at once (one round trip); if a name turns out to be taken, what this pass
        # created is deleted again (by uid), as if every name had been checked first.
        try:
            self._all(
                [
                    self._io.submit(self._write_child, obj, hashed, spec, owner, written)
                    for obj, hashed in pending
                ]
                + [
                    self._io.submit(self._delete_child, kind, owner, name, written, fresh)
                    for kind, name in unwanted
                ]
            )
        except NameConflictError:
            self._undo(owner, written)
            raise
        return written

    @staticmethod
    def _all(futures: list[Future[None]]) -> None:
        """Wait for every write; then raise the first failure (the others are done all the
        same)."""
        failed: Exception | None = None
        for future in futures:
            try:
                future.result()
            except (KubeError, NameConflictError) as error:
                failed = failed or error
        if failed is not None:
            raise failed

    def _undo(self, owner: render.Owner, written: Written) -> None:
        """Delete what this pass created (by uid): a resource whose name is taken holds none
        of its children, as if every name had been checked before the first write."""
        for kind, name, uid in written.created:
            try:
                self.kube.delete(kind, owner.namespace, name, uid=uid)
            except KubeError as error:
                logger.warning(
                    "cannot delete %s %s/%s again: %s",
                    kind.kind,
                    owner.namespace,
                    name,
                    error.message,
                )
            self.cache.forget(kind, owner.namespace, name)
            self._applied.pop((owner.uid, kind.kind, name), None)
            label = _label(kind, owner, name)
            if label in written.changed:
                written.changed.remove(label)

    def scale(self, owner: render.Owner, replicas: int, written: Written) -> None:
        """Set the stable Deployment's replicas and nothing else (frozen during a canary)."""
        stable = self.deployment(owner, owner.name)
        if stable is None or (stable.get("spec") or {}).get("replicas") == replicas:
            return
        self.cache.observe(self.kube.scale(owner.namespace, owner.name, replicas))
        metrics.WRITES.labels(kind=render.DEPLOYMENT.kind, verb="scale").inc()
        written.changed.append("Deployment/scale")

    def _write_child(
        self,
        obj: Obj,
        hashed: str,
        spec: api.ModelDeploymentSpec,
        owner: render.Owner,
        written: Written,
    ) -> None:
        kind, name = render.child_kind(obj["kind"]), obj["metadata"]["name"]
        cached = self.cache.get(kind, owner.namespace, name)
        try:
            result = self._put(obj, kind, cached, spec, owner)
        except KubeError as error:
            if not error.precondition_failed:
                raise
            # The cache was stale: the name is taken, or the object went or was replaced.
            cached = self.read(kind, owner.namespace, name)
            if cached is not None and cached.controller != owner.uid:
                raise NameConflictError(kind.kind, owner.namespace, name) from None
            result = self._put(obj, kind, cached, spec, owner)
        entry = self.cache.observe(result)
        assert entry is not None  # noqa: S101 - observe returns the entry it stored
        if cached is None:
            written.created.append((kind, name, entry.uid))
        if cached is None or cached.fingerprint != entry.fingerprint:
            written.changed.append(_label(kind, owner, name))
        self._applied[(owner.uid, kind.kind, name)] = (hashed, entry.fingerprint)

    def _put(
        self,
        obj: Obj,
        kind: render.ChildKind,
        cached: CachedChild | None,
        spec: api.ModelDeploymentSpec,
        owner: render.Owner,
    ) -> Obj:
        """Create a child the cache does not know; else apply to that very object (its uid)."""
        name = obj["metadata"]["name"]
        if cached is None:
            metrics.WRITES.labels(kind=kind.kind, verb="create").inc()
            return self.kube.create(obj)
        if cached.created_entry is not None:
            self.kube.own_as_applied(
                kind, owner.namespace, name, uid=cached.uid, index=cached.created_entry
            )
            metrics.WRITES.labels(kind=kind.kind, verb="own-as-applied").inc()
        if kind == render.DEPLOYMENT and name == owner.name:
            current = int(((cached.deployment or {}).get("spec") or {}).get("replicas") or 0)
            held = render.replicas_handoff(
                spec, owns_replicas=cached.owns_replicas, current=current
            )
            if held is not None:
                self.kube.hand_over_replicas(owner.namespace, owner.name, held)
                metrics.WRITES.labels(kind=kind.kind, verb="apply-handoff").inc()
        metrics.WRITES.labels(kind=kind.kind, verb="apply").inc()
        return self.kube.apply(obj, uid=cached.uid)

    def _delete_child(
        self,
        kind: render.ChildKind,
        owner: render.Owner,
        name: str,
        written: Written,
        fresh: bool,
    ) -> None:
        """Delete a child that must go if the cache knows it as this resource's: with its uid
        and resourceVersion as preconditions; if it changed since, read it again and delete
        it only if this resource still controls it. Its own controller (an HPA's, a PDB's)
        moves the resourceVersion every few seconds by writing its status: a child just read
        from the API server (``fresh``) is deleted with its uid alone."""
        self._applied.pop((owner.uid, kind.kind, name), None)
        cached = self.cache.get(kind, owner.namespace, name)
        if cached is None or cached.controller != owner.uid:
            return
        try:
            deleted = self.kube.delete(
                kind,
                owner.namespace,
                name,
                uid=cached.uid,
                resource_version=None if fresh else cached.resource_version,
            )
        except KubeError as error:
            if not error.precondition_failed:
                raise
            current = self.read(kind, owner.namespace, name)
            if current is None or current.controller != owner.uid:
                return
            deleted = self.kube.delete(kind, owner.namespace, name, uid=current.uid)
        self.cache.forget(kind, owner.namespace, name)
        if deleted:
            metrics.WRITES.labels(kind=kind.kind, verb="delete").inc()
            written.deleted.append(_label(kind, owner, name))
