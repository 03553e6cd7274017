"""kopf wiring: the only module that knows kopf.

- ModelDeployment created, spec changed, or found at start-up -> full reconcile.
- Any event on an owned child -> status follows (Deployment rollout), and drift (a child edited
  or deleted by hand) is re-applied. No timers or daemons: they would force a finalizer, and
  deletion would hang while the operator is down. Garbage collection of children is the API
  server's (owner references).

Run with ``python -m modeldeploy`` or ``kopf run -m modeldeploy.handlers``.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException
from prometheus_client import start_http_server

from modeldeploy import api, kube, render
from modeldeploy.kube import Kube
from modeldeploy.reconcile import Outcome, Reconciler
from modeldeploy.requeue import Requeue
from modeldeploy.settings import Settings, load_settings

logger = logging.getLogger("modeldeploy.handlers")

DOMAIN = "modeldeploy.io"
CHILD_LABELS = {render.LABEL_MANAGED_BY: render.MANAGED_BY}
RETRY_DELAY_SECONDS = 5
# Phases in which nothing will change without a new event: no re-check needed.
SETTLED_PHASES = {"Ready", "Suspended", "Failed"}

# Set by configure() (from __main__) or on start-up from the environment (kopf run -m ...).
_settings: Settings | None = None


def configure(settings: Settings) -> None:
    """Use these settings instead of reading the environment at start-up."""
    global _settings  # noqa: PLW0603 - one operator per process, configured once before kopf starts
    _settings = settings


@kopf.on.login()
def login(**_: Any) -> kopf.ConnectionInfo:
    """Authenticate kopf exactly as the operator's own client (in-cluster, else KUBECONFIG)."""
    found = kube.credentials(kube.load_client_config())
    return kopf.ConnectionInfo(
        server=found.server,
        ca_path=found.ca_path,
        insecure=found.insecure,
        scheme="Bearer" if found.token else None,
        token=found.token,
        certificate_path=found.certificate_path,
        private_key_path=found.private_key_path,
    )


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    operator_settings = _settings or load_settings([])
    settings.persistence.finalizer = f"{DOMAIN}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=DOMAIN)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=DOMAIN, key="last-handled-configuration"
    )
    # Handler log lines stay logs; Events are posted on purpose, on condition transitions.
    settings.posting.level = logging.WARNING
    # No CRD/namespace scanning: least privilege (the CRD is installed before the operator).
    settings.scanning.disabled = True
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    settings.execution.max_workers = 8
    settings.queueing.error_delays = [1, 2, 5, 10, 30]
    if operator_settings.metrics_port:
        start_http_server(operator_settings.metrics_port)
    memo.reconciler = Reconciler(Kube(operator_settings), operator_settings)
    memo.requeue = Requeue()
    logger.info(
        "operator started: image=%s namespaces=%s field_manager=%s",
        operator_settings.server_image,
        ",".join(operator_settings.namespaces) or "*",
        operator_settings.field_manager,
    )


@kopf.on.cleanup()
def cleanup(memo: kopf.Memo, **_: Any) -> None:
    requeue: Requeue | None = memo.get("requeue")
    if requeue is not None:
        requeue.stop()
    reconciler: Reconciler | None = memo.get("reconciler")
    if reconciler is not None:
        reconciler.kube.close()


def _post_events(body: Any, outcome: Outcome) -> None:
    for transition in outcome.transitions:
        kopf.event(
            body,
            type="Warning" if transition.warning else "Normal",
            reason=f"{transition.type}{transition.status}"
            if transition.type != "Ready"
            else transition.reason,
            message=f"{transition.type}={transition.status}: {transition.message}"[:1024],
        )


def _recheck(memo: kopf.Memo, namespace: str, name: str, *, apply_children: bool) -> None:
    """Re-read an unsettled resource and recompute its status (pods may be failing)."""
    reconciler: Reconciler = memo.reconciler
    try:
        parent = reconciler.kube.get_model_deployment(namespace, name)
        if parent is not None and not parent["metadata"].get("deletionTimestamp"):
            _run(memo, parent, apply_children=apply_children, trigger="recheck")
    except (ApiException, kopf.TemporaryError) as error:
        logger.warning("re-check of %s/%s failed: %s", namespace, name, error)


def _follow_up(memo: kopf.Memo, body: Any, outcome: Outcome) -> None:
    """Settled resources get no timer; progressing ones are looked at again later.

    A resource whose child name is taken by someone else's object is applied again later:
    the operator does not watch unowned objects, so nothing tells it when the name is free.
    """
    requeue: Requeue = memo.requeue
    key = body["metadata"]["uid"]
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    if outcome.retry_apply:
        requeue.schedule(key, lambda: _recheck(memo, namespace, name, apply_children=True))
    elif outcome.phase in SETTLED_PHASES:
        requeue.settle(key)
    else:
        requeue.schedule(key, lambda: _recheck(memo, namespace, name, apply_children=False))


def _run(memo: kopf.Memo, body: Any, *, apply_children: bool, trigger: str) -> None:
    reconciler: Reconciler = memo.reconciler
    try:
        outcome = reconciler.reconcile(dict(body), apply_children=apply_children, trigger=trigger)
    except ApiException as error:
        if error.status == 409:
            raise kopf.TemporaryError("conflict; retrying", delay=1) from error
        raise kopf.TemporaryError(
            f"Kubernetes API error {error.status}: {kube.api_message(error)}",
            delay=RETRY_DELAY_SECONDS,
        ) from error
    _post_events(body, outcome)
    _follow_up(memo, body, outcome)


@kopf.on.resume(api.GROUP, api.VERSION, api.PLURAL)
@kopf.on.create(api.GROUP, api.VERSION, api.PLURAL)
@kopf.on.update(api.GROUP, api.VERSION, api.PLURAL, field="spec")
def reconcile_model_deployment(body: kopf.Body, memo: kopf.Memo, reason: str, **_: Any) -> None:
    """Full reconcile. Returns nothing: kopf would store a return value in status."""
    _run(memo, body, apply_children=True, trigger=str(reason))


@kopf.on.delete(api.GROUP, api.VERSION, api.PLURAL, optional=True)
def forget_model_deployment(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Drop in-memory state; optional=True so no finalizer is ever added."""
    memo.reconciler.forget(body["metadata"]["uid"])
    memo.requeue.settle(body["metadata"]["uid"])


def _owner_name(body: kopf.Body) -> str | None:
    for ref in body.get("metadata", {}).get("ownerReferences") or []:
        if (
            ref.get("kind") == api.KIND
            and ref.get("apiVersion", "").startswith(f"{api.GROUP}/")
            and ref.get("controller")
        ):
            name: str = ref["name"]
            return name
    return None


def on_child_event(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A child changed: restore it if it drifted, and let status follow it."""
    owner = _owner_name(body)
    if owner is None:
        return
    reconciler: Reconciler = memo.reconciler
    namespace = body["metadata"]["namespace"]
    try:
        parent = reconciler.kube.get_model_deployment(namespace, owner)
    except ApiException as error:
        logger.warning("cannot read ModelDeployment %s/%s: %s", namespace, owner, error.reason)
        return
    if parent is None or parent["metadata"].get("deletionTimestamp"):
        return  # being garbage-collected with its owner
    drifted = reconciler.child_drifted(dict(body), event.get("type"))
    if not drifted and body.get("kind") != "Deployment":
        return  # status-only noise of a child whose status the operator does not report
    try:
        _run(memo, parent, apply_children=drifted, trigger="drift" if drifted else "child")
    except kopf.TemporaryError as error:
        logger.warning("reconcile of %s/%s after a child event failed: %s", namespace, owner, error)


for _kind in render.CHILD_KINDS:
    _group, _, _version = _kind.api_version.rpartition("/")
    kopf.on.event(group=_group, version=_version, plural=_kind.plural, labels=CHILD_LABELS)(
        on_child_event
    )
