"""kopf wiring: the only module that knows kopf.

kopf provides the watches (with their re-listing and reconnects), the login and the process
lifecycle; every decision is the controller's. Only watch-event handlers are registered: no
change handlers (they would keep progress in annotations), no delete handler, timer or daemon
(they would need a finalizer, and deletion would hang while the operator is down). Garbage
collection of children is the API server's (owner references).

Run with ``python -m modeldeploy`` or ``kopf run -m modeldeploy.handlers``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf
from prometheus_client import start_http_server

from modeldeploy import api, health, kube, render
from modeldeploy.controller import Controller
from modeldeploy.kube import Kube
from modeldeploy.reconcile import Reconciler
from modeldeploy.settings import Settings, load_settings

logger = logging.getLogger("modeldeploy.handlers")

CHILD_LABELS = {render.LABEL_MANAGED_BY: render.MANAGED_BY}

HEARTBEAT_SECONDS = 5.0

# Set by configure() (from __main__) or on start-up from the environment (kopf run -m ...).
_settings: Settings | None = None
_health: health.Health | None = None


def configure(settings: Settings) -> None:
    """Use these settings instead of reading the environment at start-up."""
    global _settings  # noqa: PLW0603 - one operator per process, configured once before kopf starts
    _settings = settings


def use_health(state: health.Health) -> None:
    """Beat ``state`` from kopf's event loop, so that liveness sees a wedged loop."""
    global _health  # noqa: PLW0603 - one operator per process, set once before kopf starts
    _health = state


async def _heartbeat(state: health.Health) -> None:
    while True:
        state.beat()
        await asyncio.sleep(HEARTBEAT_SECONDS)


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


class NoDiffBase(kopf.DiffBaseStorage):
    """kopf's change detection, switched off: it feeds change handlers (on.create, on.update),
    and this operator has none (the controller compares generations itself). kopf builds the
    diff base of every watch event all the same, a deep copy of the whole object: most of the
    operator's CPU at 2,000 resources."""

    def build(self, *, body: Any, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: Any) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: Any, patch: Any, essence: Any) -> None:
        return None


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    operator_settings = _settings or load_settings([])
    # Handler log lines stay logs; Events are posted by the controller, on transitions.
    settings.posting.enabled = False
    # No CRD/namespace scanning: least privilege (the CRD is installed before the operator).
    settings.scanning.disabled = True
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    if operator_settings.metrics_port:
        start_http_server(operator_settings.metrics_port)
    controller = Controller(
        Reconciler(Kube(operator_settings), operator_settings),
        workers=operator_settings.workers,
        resync_seconds=operator_settings.resync_seconds,
    )
    controller.start()
    memo.controller = controller
    if _health is not None:
        memo.heartbeat = asyncio.create_task(_heartbeat(_health))
    logger.info(
        "operator started: image=%s namespaces=%s field_manager=%s workers=%d resync=%ss",
        operator_settings.server_image,
        ",".join(operator_settings.namespaces) or "*",
        operator_settings.field_manager,
        operator_settings.workers,
        operator_settings.resync_seconds,
    )


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    heartbeat: asyncio.Task[None] | None = memo.get("heartbeat")
    if heartbeat is not None:
        heartbeat.cancel()
    controller: Controller | None = memo.get("controller")
    if controller is not None:
        await controller.stop()
        controller.reconciler.close()


@kopf.on.event(api.GROUP, api.VERSION, api.PLURAL)
async def on_model_deployment(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    """Listed, added, modified or deleted: the controller decides whether a pass is due."""
    memo.controller.parent_event(event.get("type"), dict(event["object"]))


async def on_child(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    """A child changed: its owner gets a pass if the change matters (status or drift)."""
    memo.controller.child_event(event.get("type"), dict(event["object"]))


for _kind in render.CHILD_KINDS:
    _group, _, _version = _kind.api_version.rpartition("/")
    kopf.on.event(group=_group, version=_version, plural=_kind.plural, labels=CHILD_LABELS)(
        on_child
    )
