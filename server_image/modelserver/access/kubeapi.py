"""The server's own calls to the Kubernetes API: TokenReview and SubjectAccessReview, nothing else.

Two POSTs do not justify the official client in the image (it brings requests, urllib3, google-auth,
websocket-client, oauthlib and PyYAML: megabytes, and an import time every worker would pay), so
this is the standard library's http.client over TLS. The API server is found in-cluster (the
projected ServiceAccount token, re-read on every call because the kubelet rotates it) or through
the current context of KUBECONFIG (JSON, or YAML when PyYAML is installed, as in development).
Calls block: the caller runs them in a thread.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import http.client
import json
import os
import ssl
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
_TIMEOUT_SECONDS = 5.0


class ApiUnavailableError(Exception):
    """The API server could not answer the review (down, slow, or refused our credentials)."""


class DiscoveryError(Exception):
    """No usable way to reach the API server."""


@dataclasses.dataclass(frozen=True)
class UserInfo:
    """Who a token belongs to, as the TokenReview says."""

    username: str
    uid: str
    groups: tuple[str, ...]
    extra: Mapping[str, list[str]]


@dataclasses.dataclass(frozen=True)
class ResourceAttributes:
    """What a SubjectAccessReview asks about."""

    namespace: str
    name: str
    verb: str = "create"
    group: str = "serving.modeldeploy.io"
    resource: str = "modeldeployments"
    subresource: str = "predict"


class ApiServer:
    """One API server and the credentials to call it; safe to use from several threads."""

    def __init__(
        self,
        url: str,
        context: ssl.SSLContext,
        *,
        token: str | None = None,
        token_file: Path | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise DiscoveryError(f"the API server must be an https:// URL, got {url!r}")
        self.url = url
        self._host = parts.hostname
        self._port = parts.port or 443
        self._context = context
        self._token = token
        self._token_file = token_file
        self._local = threading.local()

    def review_token(self, token: str) -> UserInfo | None:
        """The token's user, or None when the API server does not accept the token."""
        answer = self._post(
            "/apis/authentication.k8s.io/v1/tokenreviews",
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenReview",
                "spec": {"token": token},
            },
        )
        status = answer.get("status") or {}
        if not status.get("authenticated"):
            return None
        user = status.get("user") or {}
        return UserInfo(
            username=str(user.get("username", "")),
            uid=str(user.get("uid", "")),
            groups=tuple(str(group) for group in user.get("groups") or ()),
            extra=dict(user.get("extra") or {}),
        )

    def may(self, user: UserInfo, attributes: ResourceAttributes) -> tuple[bool, str]:
        """Whether RBAC (or any authorizer) allows the user; with the API server's reason."""
        spec: dict[str, Any] = {
            "resourceAttributes": dataclasses.asdict(attributes),
            "user": user.username,
            "groups": list(user.groups),
        }
        if user.uid:
            spec["uid"] = user.uid
        if user.extra:
            spec["extra"] = dict(user.extra)
        answer = self._post(
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            {
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SubjectAccessReview",
                "spec": spec,
            },
        )
        status = answer.get("status") or {}
        return bool(status.get("allowed")) and not status.get("denied"), str(
            status.get("reason", "")
        )

    def _post(self, path: str, document: dict[str, Any]) -> dict[str, Any]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        bearer = self._bearer()
        if bearer:
            headers["Authorization"] = f"Bearer {bearer}"
        body = json.dumps(document).encode()
        for attempt in range(2):  # a kept-alive connection the API server closed: once more
            connection = self._connection()
            try:
                connection.request("POST", path, body=body, headers=headers)
                response = connection.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException) as error:
                self._drop_connection()
                if attempt == 0 and not isinstance(error, TimeoutError):
                    continue
                raise ApiUnavailableError(f"{self.url}{path}: {error}") from None
            if response.status not in (200, 201):
                raise ApiUnavailableError(
                    f"{self.url}{path} answered {response.status}: {data[:300]!r}"
                )
            try:
                answer: dict[str, Any] = json.loads(data)
            except ValueError:
                raise ApiUnavailableError(f"{self.url}{path} answered no JSON") from None
            return answer
        raise AssertionError("unreachable")  # pragma: no cover

    def _bearer(self) -> str | None:
        if self._token_file is not None:
            try:
                return self._token_file.read_text().strip()
            except OSError as error:
                raise ApiUnavailableError(f"cannot read {self._token_file}: {error}") from None
        return self._token

    def _connection(self) -> http.client.HTTPSConnection:
        connection: http.client.HTTPSConnection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = http.client.HTTPSConnection(
                self._host, self._port, context=self._context, timeout=_TIMEOUT_SECONDS
            )
            self._local.connection = connection
        return connection

    def _drop_connection(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None


def discover(environ: Mapping[str, str]) -> ApiServer:
    """The API server of the pod (in-cluster) or of KUBECONFIG's current context."""
    host = environ.get("KUBERNETES_SERVICE_HOST")
    token_file = SERVICE_ACCOUNT / "token"
    if host and token_file.exists():
        port = environ.get("KUBERNETES_SERVICE_PORT", "443")
        context = ssl.create_default_context(cafile=str(SERVICE_ACCOUNT / "ca.crt"))
        url = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
        return ApiServer(url, context, token_file=token_file)
    kubeconfig = environ.get("KUBECONFIG", "").split(os.pathsep)[0]
    if not kubeconfig:
        raise DiscoveryError(
            "--auth kubernetes needs the API server: run in a pod with a ServiceAccount token "
            "mounted, or set KUBECONFIG"
        )
    return _from_kubeconfig(Path(kubeconfig))


def in_cluster_namespace() -> str | None:
    """The pod's namespace from its ServiceAccount mount, when there is one."""
    try:
        return (SERVICE_ACCOUNT / "namespace").read_text().strip() or None
    except OSError:
        return None


def _load_document(path: Path) -> dict[str, Any]:
    text = path.read_text()
    try:
        document: dict[str, Any] = json.loads(text)
    except ValueError:
        try:
            import yaml  # noqa: PLC0415 - development only; the image reads in-cluster config.
        except ImportError:
            raise DiscoveryError(f"{path} is YAML; install PyYAML or give it as JSON") from None
        document = yaml.safe_load(text)
    return document


def _named(document: dict[str, Any], kind: str, name: str) -> dict[str, Any]:
    for entry in document.get(kind + "s") or ():
        if entry.get("name") == name:
            found: dict[str, Any] = entry.get(kind) or {}
            return found
    raise DiscoveryError(f"kubeconfig has no {kind} named {name!r}")


def _from_kubeconfig(path: Path) -> ApiServer:
    try:
        document = _load_document(path)
    except OSError as error:
        raise DiscoveryError(f"cannot read KUBECONFIG {path}: {error}") from None
    context_name = document.get("current-context", "")
    context = _named(document, "context", context_name)
    cluster = _named(document, "cluster", context.get("cluster", ""))
    user = _named(document, "user", context.get("user", ""))
    base = path.parent
    tls = ssl.create_default_context()
    if cluster.get("insecure-skip-tls-verify"):
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE
    if cluster.get("certificate-authority-data"):
        tls.load_verify_locations(
            cadata=base64.b64decode(cluster["certificate-authority-data"]).decode()
        )
    elif cluster.get("certificate-authority"):
        tls.load_verify_locations(cafile=str(base / cluster["certificate-authority"]))
    _load_client_certificate(tls, user, base)
    token_file = Path(base / user["tokenFile"]) if user.get("tokenFile") else None
    return ApiServer(cluster.get("server", ""), tls, token=user.get("token"), token_file=token_file)


def _load_client_certificate(tls: ssl.SSLContext, user: dict[str, Any], base: Path) -> None:
    """Loads the user's client certificate and key (files, or inline data through a private
    temporary file that is removed at once: ssl reads certificates from files only)."""
    if user.get("client-certificate"):
        tls.load_cert_chain(str(base / user["client-certificate"]), str(base / user["client-key"]))
        return
    if not user.get("client-certificate-data"):
        return
    pem = base64.b64decode(user["client-certificate-data"]) + b"\n"
    pem += base64.b64decode(user["client-key-data"])
    descriptor, name = tempfile.mkstemp(suffix=".pem")  # mode 0600
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(pem)
        tls.load_cert_chain(name)
    finally:
        with contextlib.suppress(OSError):
            Path(name).unlink()
