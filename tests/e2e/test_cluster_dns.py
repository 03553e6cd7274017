"""Cluster DNS on the real node: pods find Services by name through CoreDNS.

The kubelet points every pod's resolv.conf at the ``kube-dns`` Service (CoreDNS, whose
``kubernetes`` plugin watches the API server), with the namespace's search domains, so a pod
resolves ``<service>.<namespace>.svc.cluster.local`` and the short ``<service>`` to the
Service's cluster IP, and connects to it by name.
"""

from __future__ import annotations

import json

from kubernetes import client

from localcluster import coredns, images

from .support import pod_log, script_pod, wait_for

BACKEND = r"""
import http.server, socketserver, sys

class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = sys.argv[1].encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

socketserver.TCPServer.allow_reuse_address = True
socketserver.TCPServer(("", 8080), Hello).serve_forever()
"""

#: Resolves each name given (IPv4 addresses or the error), then GETs the first one by name,
#: retrying for a while (the backend may still be starting); one JSON line.
RESOLVER = r"""
import json, socket, sys, time, urllib.request

out = {"resolv.conf": open("/etc/resolv.conf").read()}
for name in sys.argv[1:]:
    try:
        infos = socket.getaddrinfo(name, 8080, socket.AF_INET, socket.SOCK_STREAM)
        out[name] = sorted({info[4][0] for info in infos})
    except OSError as err:
        out[name] = f"error: {err}"
deadline = time.monotonic() + 30
while True:
    try:
        url = f"http://{sys.argv[1]}:8080/"
        out["body"] = urllib.request.urlopen(url, timeout=5).read().decode()
        break
    except OSError as err:
        out["body"] = f"error: {err}"
        if time.monotonic() > deadline:
            break
        time.sleep(1)
print(json.dumps(out))
"""


def test_pods_resolve_services_by_name_and_connect(
    api_client: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(api_client)
    greeting = f"hello from {namespace}"
    core.create_namespaced_pod(
        namespace, script_pod("backend", images.SERVER_IMAGE, BACKEND, greeting)
    )
    core.create_namespaced_service(
        namespace,
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "greeter"},
            "spec": {"selector": {"app": "backend"}, "ports": [{"port": 8080}]},
        },
    )
    cluster_ip = core.read_namespaced_service("greeter", namespace).spec.cluster_ip
    fqdn = f"greeter.{namespace}.svc.{coredns.CLUSTER_DOMAIN}"
    names = [fqdn, "greeter", f"greeter.{namespace}", "no-such-service"]
    core.create_namespaced_pod(
        namespace, script_pod("resolver", images.SERVER_IMAGE, RESOLVER, *names)
    )

    def finished() -> bool:
        phase = core.read_namespaced_pod("resolver", namespace).status.phase
        return phase in ("Succeeded", "Failed")

    wait_for("the resolver pod to finish", finished, timeout=120, interval=1)
    result = json.loads(pod_log(core, namespace, "resolver").strip().splitlines()[-1])

    resolv = result["resolv.conf"].split("\n")
    assert f"nameserver {coredns.DNS_SERVICE_IP}" in resolv, result
    search = next(line for line in resolv if line.startswith("search "))
    assert search.split()[1:4] == [
        f"{namespace}.svc.cluster.local",
        "svc.cluster.local",
        "cluster.local",
    ], result
    assert result[fqdn] == [cluster_ip], result
    assert result["greeter"] == [cluster_ip], result
    assert result[f"greeter.{namespace}"] == [cluster_ip], result
    assert str(result["no-such-service"]).startswith("error:"), result
    assert result["body"] == greeting, result
