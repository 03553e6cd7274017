"""A minimal HTTPS client for the few API calls the harness makes itself.

Readiness probes and creating the fake nodes need only GET and POST; using the standard
library keeps the harness free of the ``kubernetes`` client, so it works from any venv.
"""

from __future__ import annotations

import http.client
import json
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class ApiClient:
    """mTLS requests to one kube-apiserver (or plain HTTP to etcd and kwok)."""

    def __init__(
        self,
        server: str,
        *,
        ca_cert: Path | None = None,
        client_cert: Path | None = None,
        client_key: Path | None = None,
        verify: bool = True,
    ) -> None:
        url = urlsplit(server)
        self.scheme = url.scheme
        self.host = url.hostname or "127.0.0.1"
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self._ctx: ssl.SSLContext | None = None
        if url.scheme == "https":
            ctx = ssl.create_default_context(cafile=str(ca_cert) if ca_cert else None)
            if not verify:
                # Only for the controller-manager's and scheduler's self-signed /healthz.
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            if client_cert and client_key:
                ctx.load_cert_chain(str(client_cert), str(client_key))
            self._ctx = ctx

    def request(
        self, method: str, path: str, body: Any = None, *, timeout: float = 5.0
    ) -> Response:
        conn: http.client.HTTPConnection
        if self._ctx is not None:
            conn = http.client.HTTPSConnection(
                self.host, self.port, context=self._ctx, timeout=timeout
            )
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            headers = {"Accept": "application/json"}
            data = None
            if body is not None:
                data = json.dumps(body).encode()
                headers["Content-Type"] = "application/json"
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            return Response(resp.status, resp.read())
        finally:
            conn.close()

    def get(self, path: str, *, timeout: float = 5.0) -> Response:
        return self.request("GET", path, timeout=timeout)

    def post(self, path: str, body: Any, *, timeout: float = 5.0) -> Response:
        return self.request("POST", path, body, timeout=timeout)

    def ok(self, path: str, *, timeout: float = 2.0) -> bool:
        """True if GET ``path`` answers 200; any connection error counts as not yet."""
        try:
            return self.get(path, timeout=timeout).status == 200
        except (OSError, http.client.HTTPException):
            return False
