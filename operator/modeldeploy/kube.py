"""The one module that talks to the Kubernetes API (the official, synchronous client).

Every call is bounded by a timeout: reconciles run in worker threads, and a hung call would hold
a thread forever. Writes use server-side apply under one field manager, so applying an unchanged
object is a no-op on the server (no new resourceVersion, no watch event). Failures leave this
module as ``KubeError`` only: nothing above it imports the client's exceptions.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.leaderelection import electionconfig, leaderelection, leaderelectionrecord

from modeldeploy import api, metrics
from modeldeploy.render import (
    CHILD_KINDS,
    DEPLOYMENT,
    LABEL_MANAGED_BY,
    MANAGED_BY,
    REVIEWER_BINDING,
    ChildKind,
)
from modeldeploy.settings import Settings

Obj = dict[str, Any]

APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"


def load_client_config() -> client.Configuration:
    """In-cluster credentials when running in a pod, else the current KUBECONFIG."""
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        # Read KUBECONFIG now: the client's own default was captured when it was imported.
        path = os.environ.get("KUBECONFIG") or "~/.kube/config"
        config.load_kube_config(config_file=path, client_configuration=configuration)
    return configuration


@dataclass(frozen=True)
class Credentials:
    """How to reach the API server, for the parts of the operator that bring their own client."""

    server: str
    ca_path: str | None
    insecure: bool
    token: str | None
    certificate_path: str | None
    private_key_path: str | None


def credentials(configuration: client.Configuration) -> Credentials:
    """The connection details of a loaded client configuration."""
    # "Bearer <token>" from a kubeconfig, "bearer <token>" from the in-cluster loader.
    scheme, _, value = (configuration.api_key or {}).get("authorization", "").partition(" ")
    token = value.strip() if scheme.lower() == "bearer" and value.strip() else None
    return Credentials(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        token=token,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
    )


def _status_body(error: ApiException) -> Obj:
    try:
        body = json.loads(error.body or "{}")
    except (ValueError, TypeError):
        return {}
    return body if isinstance(body, dict) else {}


def api_message(error: ApiException) -> str:
    """The Status message the API server sent (it names the verb, resource and user)."""
    return str(_status_body(error).get("message") or error.reason)


# Refusals that a retry of the same request will not change: the spec, RBAC, admission or a
# quota must change first. 409 (conflict) and 429 (throttled) are transient.
_PERMANENT_CODES = frozenset({400, 401, 403, 404, 405, 406, 410, 413, 415, 422})


class KubeError(Exception):
    """An API call failed: the HTTP status, the API server's message, and whether a retry of
    the same request can succeed without someone changing something."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        kind: str = "",
        retry_after: float = 0.0,
        reason: str = "",
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.retry_after = retry_after
        self.reason = reason  # the Status reason: AlreadyExists, Conflict, Invalid, ...

    @property
    def precondition_failed(self) -> bool:
        """A write's precondition did not hold: the object exists (create), was replaced or
        is gone (uid), or changed (resourceVersion). Read it once and decide again."""
        return self.status == 409

    @property
    def permanent(self) -> bool:
        return self.status in _PERMANENT_CODES

    @classmethod
    def from_api(cls, error: ApiException, kind: str) -> KubeError:
        retry_after = 0.0
        with_headers = getattr(error, "headers", None) or {}
        try:
            retry_after = float(with_headers.get("Retry-After") or 0)
        except (TypeError, ValueError):
            retry_after = 0.0
        # status 0: no answer at all (connection refused, timeout): transient.
        return cls(
            error.status or 0,
            api_message(error),
            kind=kind,
            retry_after=retry_after,
            reason=str(_status_body(error).get("reason") or ""),
        )


def _base(api_version: str) -> str:
    return f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"


def _path(api_version: str, plural: str, namespace: str, name: str | None = None) -> str:
    """The object's URL path; an empty namespace addresses a cluster-scoped kind."""
    scope = f"/namespaces/{namespace}" if namespace else ""
    path = f"{_base(api_version)}{scope}/{plural}"
    return f"{path}/{name}" if name else path


_PLURALS = {kind.kind: kind.plural for kind in (*CHILD_KINDS, REVIEWER_BINDING)} | {
    api.KIND: api.PLURAL
}


class Kube:
    """Thin, typed-enough access to the few API calls the operator makes."""

    def __init__(self, settings: Settings, configuration: client.Configuration | None = None):
        self._settings = settings
        self._configuration = configuration or load_client_config()
        # One connection per kopf worker thread, plus re-checks; the default pool holds 10.
        self._configuration.connection_pool_maxsize = 32
        self._client = client.ApiClient(self._configuration)
        self._timeout = settings.api_timeout_seconds

    def close(self) -> None:
        self._client.close()

    def _call(
        self,
        method: str,
        path: str,
        *,
        kind: str,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str | None = None,
    ) -> Obj:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        # Set the bearer token here: the generated client looks it up under another key than
        # the kubeconfig loader stores it (and this also runs the in-cluster refresh hook).
        token = self._configuration.get_api_key_with_prefix("authorization")
        if token:
            headers["Authorization"] = token
        metrics.API_REQUESTS.labels(verb=method, kind=kind).inc()
        try:
            response = self._client.call_api(
                path,
                method,
                query_params=query or [],
                header_params=headers,
                body=body,
                _preload_content=False,
                _request_timeout=self._timeout,
            )
        except ApiException as error:
            if error.status != 404:
                metrics.API_ERRORS.labels(verb=method, kind=kind, code=str(error.status)).inc()
            raise KubeError.from_api(error, kind) from None
        except (OSError, urllib3.exceptions.HTTPError) as error:
            metrics.API_ERRORS.labels(verb=method, kind=kind, code="0").inc()
            raise KubeError(0, f"{method} {kind}: {error}", kind=kind) from None
        raw = response[0].data if isinstance(response, tuple) else response.data
        result: Obj = json.loads(raw) if raw else {}
        return result

    # --- writes -------------------------------------------------------------------------

    def create(self, obj: Obj) -> Obj:
        """Create ``obj``; a 409 KubeError (reason AlreadyExists) when the name is taken, by
        anyone: the precondition of a child that the watch cache does not know."""
        meta = obj["metadata"]
        return self._call(
            "POST",
            _path(obj["apiVersion"], _PLURALS[obj["kind"]], meta.get("namespace", "")),
            kind=obj["kind"],
            body=obj,
            query=[("fieldManager", self._settings.field_manager)],
        )

    def apply(self, obj: Obj, *, field_manager: str | None = None, uid: str | None = None) -> Obj:
        """Server-side apply ``obj`` (force: the operator is the authority on what it renders).

        With ``uid``, only to that object: a 409 KubeError when it is gone or was replaced.
        The API server answers the first with a 409 (it never creates an object whose apply
        names a uid) and the second with a 422 for ``metadata.uid`` (immutable); here both
        are the failed precondition they are.
        """
        meta = obj["metadata"]
        if uid:
            obj = {**obj, "metadata": {**meta, "uid": uid}}
        path = _path(
            obj["apiVersion"], _PLURALS[obj["kind"]], meta.get("namespace", ""), meta["name"]
        )
        try:
            return self._call(
                "PATCH",
                path,
                kind=obj["kind"],
                body=obj,
                query=[
                    ("fieldManager", field_manager or self._settings.field_manager),
                    ("force", "true"),
                ],
                content_type=APPLY,
            )
        except KubeError as error:
            if uid and error.status == 422 and "metadata.uid" in error.message:
                raise KubeError(409, error.message, kind=obj["kind"], reason="Conflict") from None
            raise

    def own_as_applied(
        self, kind: ChildKind, namespace: str, name: str, *, uid: str, index: int
    ) -> Obj:
        """Turn the operator's ``Update`` entry in an object's managedFields (left by its
        create) into an ``Apply`` entry, so that its next apply removes the fields it no
        longer sets (what kubectl's upgrade from client-side apply does).

        The patch tests the object's uid and the entry first: a 409 KubeError when the object
        was replaced or the entry moved since it was seen (the API server answers a failed
        test with a 422; here it is the precondition it is).
        """
        entry = f"/metadata/managedFields/{index}"
        patch = [
            {"op": "test", "path": "/metadata/uid", "value": uid},
            {"op": "test", "path": f"{entry}/manager", "value": self._settings.field_manager},
            {"op": "test", "path": f"{entry}/operation", "value": "Update"},
            {"op": "replace", "path": f"{entry}/operation", "value": "Apply"},
        ]
        try:
            return self._call(
                "PATCH",
                _path(kind.api_version, kind.plural, namespace, name),
                kind=kind.kind,
                body=patch,
                query=[("fieldManager", self._settings.field_manager)],
                content_type=JSON_PATCH,
            )
        except KubeError as error:
            if error.status in (404, 422):
                raise KubeError(409, error.message, kind=kind.kind, reason="Conflict") from None
            raise

    def hand_over_replicas(self, namespace: str, name: str, replicas: int) -> Obj:
        """Let a second field manager co-own Deployment.spec.replicas at its current value.

        When autoscaling is switched on, the operator stops applying ``replicas``. If it were the
        field's only owner, server-side apply would remove the field and the Deployment would
        drop to 1 replica before the HPA reacts. With a co-owner the value stays until the HPA
        takes the field over.
        """
        handoff = {
            "apiVersion": DEPLOYMENT.api_version,
            "kind": DEPLOYMENT.kind,
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"replicas": replicas},
        }
        return self.apply(handoff, field_manager=f"{self._settings.field_manager}-handoff")

    def scale(self, namespace: str, name: str, replicas: int) -> Obj:
        """Set a Deployment's replicas and nothing else (the stable one, frozen during a canary)."""
        return self._call(
            "PATCH",
            _path(DEPLOYMENT.api_version, DEPLOYMENT.plural, namespace, name),
            kind=DEPLOYMENT.kind,
            body={"spec": {"replicas": replicas}},
            query=[("fieldManager", self._settings.field_manager)],
            content_type=MERGE,
        )

    def remove_annotation(self, namespace: str, name: str, key: str) -> None:
        """Remove one annotation of a ModelDeployment (a command that has been carried out)."""
        self._call(
            "PATCH",
            _path(api.API_VERSION, api.PLURAL, namespace, name),
            kind=api.KIND,
            body={"metadata": {"annotations": {key: None}}},
            query=[("fieldManager", self._settings.field_manager)],
            content_type=MERGE,
        )

    def delete(
        self,
        kind: ChildKind,
        namespace: str,
        name: str,
        *,
        uid: str | None = None,
        resource_version: str | None = None,
    ) -> bool:
        """Delete a child; False when it was already gone.

        With ``uid`` / ``resource_version``, only that object in that version: a 409 KubeError
        when it was replaced or changed since it was read.
        """
        preconditions = {
            key: value
            for key, value in (("uid", uid), ("resourceVersion", resource_version))
            if value
        }
        body = (
            {"apiVersion": "v1", "kind": "DeleteOptions", "preconditions": preconditions}
            if preconditions
            else None
        )
        try:
            self._call(
                "DELETE",
                _path(kind.api_version, kind.plural, namespace, name),
                kind=kind.kind,
                body=body,
                query=[("propagationPolicy", "Background")],
            )
        except KubeError as error:
            if error.status == 404:
                return False
            raise
        return True

    def apply_status(self, namespace: str, name: str, status: Obj) -> Obj:
        """Server-side apply of the status subresource (fields no longer set are removed)."""
        body = {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND,
            "metadata": {"name": name, "namespace": namespace},
            "status": status,
        }
        path = _path(api.API_VERSION, api.PLURAL, namespace, name) + "/status"
        return self._call(
            "PATCH",
            path,
            kind=api.KIND,
            body=body,
            query=[("fieldManager", self._settings.field_manager), ("force", "true")],
            content_type=APPLY,
        )

    # --- reads --------------------------------------------------------------------------

    def _get(self, path: str, kind: str) -> Obj | None:
        try:
            return self._call("GET", path, kind=kind)
        except KubeError as error:
            if error.status == 404:
                return None
            raise

    def get(self, kind: ChildKind, namespace: str, name: str) -> Obj | None:
        """A child, or None when it does not exist."""
        return self._get(_path(kind.api_version, kind.plural, namespace, name), kind.kind)

    def get_model_deployment(self, namespace: str, name: str) -> Obj | None:
        """A ModelDeployment as the API server has it now, or None when it does not exist."""
        return self._get(_path(api.API_VERSION, api.PLURAL, namespace, name), api.KIND)

    def list_pods(self, namespace: str, selector: str, limit: int = 20) -> list[Obj]:
        """Pods matching ``selector``, from the API server's watch cache (``resourceVersion=0``).

        Only read to explain a rollout or to find the pods to scrape, so a copy a moment old
        will do; a quorum read would make etcd range over every pod of the namespace to find
        the few that match (thousands, once per child event, at 2,000 resources).
        """
        result = self._call(
            "GET",
            _path("v1", "pods", namespace),
            kind="Pod",
            query=[("labelSelector", selector), ("limit", str(limit)), ("resourceVersion", "0")],
        )
        items: list[Obj] = result.get("items", [])
        return items

    def list_reviewer_bindings(self) -> list[Obj]:
        """The token-review ClusterRoleBindings this operator made (by their labels)."""
        result = self._call(
            "GET",
            _path(REVIEWER_BINDING.api_version, REVIEWER_BINDING.plural, ""),
            kind=REVIEWER_BINDING.kind,
            query=[("labelSelector", f"{LABEL_MANAGED_BY}={MANAGED_BY}")],
        )
        items: list[Obj] = result.get("items", [])
        return items

    def list_model_deployments(self, namespaces: tuple[str, ...] = ()) -> list[Obj]:
        """Every ModelDeployment of ``namespaces`` (all namespaces when empty)."""
        paths = [_path(api.API_VERSION, api.PLURAL, ns) for ns in namespaces] or [
            _path(api.API_VERSION, api.PLURAL, "")
        ]
        items: list[Obj] = []
        for path in paths:
            items += self._call("GET", path, kind=api.KIND).get("items", [])
        return items

    def post_event(
        self, involved: Obj, *, type_: str, reason: str, message: str, component: str
    ) -> None:
        """A core/v1 Event about ``involved`` (apiVersion, kind, name, namespace, uid)."""
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        namespace = involved["namespace"]
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{involved['name']}.{uuid.uuid4().hex[:16]}",
                "namespace": namespace,
            },
            "involvedObject": involved,
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": component},
            "reportingComponent": component,
            "reportingInstance": component,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "eventTime": None,
            "count": 1,
        }
        self._call("POST", _path("v1", "events", namespace), kind="Event", body=event)


# --- leader election ------------------------------------------------------------------------

LEASE_API = "coordination.k8s.io/v1"


def _micro_time(text: str | None) -> str | None:
    """The election module's ``str(datetime)`` (local, naive) as a Lease MicroTime."""
    if not text:
        return None
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.astimezone()  # the module stamps naive local times
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class _Refusal:
    """What the election module expects back from a failed read: a body with the code."""

    body: str
    reason: str


class LeaseLock:
    """A ``coordination.k8s.io/v1`` Lease as the lock of the client's leader-election module
    (which ships only a ConfigMap lock). Updates carry the resourceVersion that was read, so
    two candidates can never both take the lock; ``release()`` empties the holder so that a
    standby takes over at its next try instead of waiting for the lease to expire."""

    def __init__(self, kube: Kube, name: str, namespace: str, identity: str):
        self.name = name
        self.namespace = namespace
        self.identity = identity
        self._kube = kube
        self._version: str | None = None
        self._transitions = 0
        self._holder: str | None = None
        self._released = threading.Event()

    def _lease_path(self, name: str | None = None) -> str:
        return _path(LEASE_API, "leases", self.namespace, name)

    def get(self, name: str, namespace: str) -> tuple[bool, Any]:
        try:
            lease = self._kube._call("GET", self._lease_path(name), kind="Lease")
        except KubeError as error:
            return False, _Refusal(json.dumps({"code": error.status}), error.message)
        self._version = lease["metadata"].get("resourceVersion")
        spec = lease.get("spec") or {}
        self._transitions = int(spec.get("leaseTransitions") or 0)
        self._holder = spec.get("holderIdentity") or None
        return True, leaderelectionrecord.LeaderElectionRecord(
            self._holder,  # None once released: the next candidate takes it at once
            str(spec.get("leaseDurationSeconds")) if spec.get("leaseDurationSeconds") else None,
            spec.get("acquireTime"),
            spec.get("renewTime"),
        )

    def _body(self, record: Any, *, version: str | None) -> Obj:
        transitions = self._transitions + (
            1 if self._holder is not None and self._holder != record.holder_identity else 0
        )
        metadata: Obj = {"name": self.name, "namespace": self.namespace}
        if version:
            metadata["resourceVersion"] = version
        return {
            "apiVersion": LEASE_API,
            "kind": "Lease",
            "metadata": metadata,
            "spec": {
                "holderIdentity": record.holder_identity,
                "leaseDurationSeconds": int(float(record.lease_duration)),
                "acquireTime": _micro_time(record.acquire_time),
                "renewTime": _micro_time(record.renew_time),
                "leaseTransitions": transitions,
            },
        }

    def create(self, name: str, namespace: str, election_record: Any) -> bool:
        if self._released.is_set():
            return False
        try:
            self._kube._call(
                "POST",
                self._lease_path(),
                kind="Lease",
                body=self._body(election_record, version=None),
            )
        except KubeError:
            return False
        return True

    def update(self, name: str, namespace: str, updated_record: Any) -> bool:
        if self._released.is_set():
            return False  # stopping: never take the lock back after releasing it
        try:
            self._kube._call(
                "PUT",
                self._lease_path(name),
                kind="Lease",
                body=self._body(updated_record, version=self._version),
            )
        except KubeError:
            return False
        return True

    def release(self) -> bool:
        """Give the lease up (on SIGTERM) if this candidate holds it; True when released."""
        self._released.set()
        try:
            lease = self._kube._call("GET", self._lease_path(self.name), kind="Lease")
            spec = lease.get("spec") or {}
            if spec.get("holderIdentity") != self.identity:
                return False
            spec.update({"holderIdentity": None, "leaseDurationSeconds": 1})
            self._kube._call("PUT", self._lease_path(self.name), kind="Lease", body=lease)
        except KubeError:
            return False
        return True


def run_election(
    lock: LeaseLock,
    *,
    on_leading: Callable[[], None],
    on_lost: Callable[[], None],
    lease_seconds: int = 15,
    renew_deadline_seconds: int = 10,
    retry_seconds: int = 1,
) -> threading.Thread:
    """The client's leader election in a daemon thread; ``on_leading`` runs in a thread of
    its own once the lease is held, ``on_lost`` when it could not be renewed in time."""
    config_ = electionconfig.Config(
        lock, lease_seconds, renew_deadline_seconds, retry_seconds, on_leading, on_lost
    )
    thread = threading.Thread(
        target=leaderelection.LeaderElection(config_).run, name="leader-election", daemon=True
    )
    thread.start()
    return thread
