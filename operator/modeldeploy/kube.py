"""The one module that talks to the Kubernetes API (the official, synchronous client).

Every call is bounded by a timeout: kopf runs sync handlers in a thread pool, and a hung call
would hold a thread forever. Writes use server-side apply under one field manager, so applying
an unchanged object is a no-op on the server (no new resourceVersion, no watch event).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from modeldeploy import api, metrics
from modeldeploy.render import CHILD_KINDS, DEPLOYMENT, ChildKind
from modeldeploy.settings import Settings

Obj = dict[str, Any]

APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"


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


def api_message(error: ApiException) -> str:
    """The Status message the API server sent (it names the verb, resource and user)."""
    try:
        message = json.loads(error.body or "{}").get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message or error.reason)


def _base(api_version: str) -> str:
    return f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"


def _path(api_version: str, plural: str, namespace: str, name: str | None = None) -> str:
    path = f"{_base(api_version)}/namespaces/{namespace}/{plural}"
    return f"{path}/{name}" if name else path


_PLURALS = {kind.kind: kind.plural for kind in CHILD_KINDS} | {api.KIND: api.PLURAL}


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
            raise
        raw = response[0].data if isinstance(response, tuple) else response.data
        result: Obj = json.loads(raw) if raw else {}
        return result

    # --- writes -------------------------------------------------------------------------

    def apply(self, obj: Obj, *, field_manager: str | None = None) -> Obj:
        """Server-side apply ``obj`` (force: the operator is the authority on what it renders)."""
        meta = obj["metadata"]
        path = _path(obj["apiVersion"], _PLURALS[obj["kind"]], meta["namespace"], meta["name"])
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

    def delete(self, kind: ChildKind, namespace: str, name: str) -> bool:
        """Delete a child; False when it was already gone."""
        try:
            self._call(
                "DELETE",
                _path(kind.api_version, kind.plural, namespace, name),
                kind=kind.kind,
                query=[("propagationPolicy", "Background")],
            )
        except ApiException as error:
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
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def get(self, kind: ChildKind, namespace: str, name: str) -> Obj | None:
        """A child, or None when it does not exist."""
        return self._get(_path(kind.api_version, kind.plural, namespace, name), kind.kind)

    def get_model_deployment(self, namespace: str, name: str) -> Obj | None:
        """A ModelDeployment, or None when it does not exist."""
        return self._get(_path(api.API_VERSION, api.PLURAL, namespace, name), api.KIND)

    def list_pods(self, namespace: str, selector: str, limit: int = 20) -> list[Obj]:
        """Pods matching ``selector`` (bounded: only read to explain a stuck rollout)."""
        result = self._call(
            "GET",
            _path("v1", "pods", namespace),
            kind="Pod",
            query=[("labelSelector", selector), ("limit", str(limit))],
        )
        items: list[Obj] = result.get("items", [])
        return items
