"""Who may call a model, on the real node: two client pods with their own ServiceAccounts, one
bound to a Role for `modeldeployments/predict`, one not; and the pod's rate limit.

The model pods check each token against the API server (TokenReview, SubjectAccessReview) with
the account and binding the operator gave them; the clients send their own projected tokens.
"""

from __future__ import annotations

import json
from typing import Any

from kubernetes import client

from integration.operator_support import grant_predict
from localcluster import images

from .support import Models, pod_log, script_pod, wait_for

FILE_URI = "file:///opt/models/iris/model.joblib"

#: Sends `count` predictions with the pod's own token as fast as it can, then one without a
#: token; prints the statuses (and the Retry-After of the first 429) as JSON.
CALLER = r"""
import json, sys, time, urllib.error, urllib.request
url, count = sys.argv[1], int(sys.argv[2])
token = open("/var/run/secrets/kubernetes.io/serviceaccount/token").read().strip()
body = json.dumps({"instances": [[5.1, 3.5, 1.4, 0.2]]}).encode()

def call(headers):
    request = urllib.request.Request(url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, None
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Retry-After")
    except Exception as error:
        return f"{type(error).__name__}: {error}", None

deadline = time.time() + 30
while time.time() < deadline:  # until the NetworkPolicy admits this new pod
    status, _ = call({"Content-Type": "application/json"})
    if isinstance(status, int):
        break
    time.sleep(0.5)
time.sleep(2)  # a full bucket for the measured burst
statuses, retry_after = [], None
for _ in range(count):
    status, retry = call({"Authorization": "Bearer " + token, "Content-Type": "application/json"})
    statuses.append(status)
    if status == 429 and retry_after is None:
        retry_after = retry
time.sleep(1.5)  # the limit comes first: a token for the call without one
anonymous, _ = call({"Content-Type": "application/json"})
print(json.dumps({"statuses": statuses, "retry_after": retry_after, "anonymous": anonymous}))
"""


def _call_as(
    core: client.CoreV1Api, namespace: str, account: str, url: str, count: int
) -> dict[str, Any]:
    pod = script_pod(f"caller-{account}", images.SERVER_IMAGE, CALLER, url, str(count))
    pod["spec"]["serviceAccountName"] = account
    pod["spec"]["automountServiceAccountToken"] = True
    core.create_namespaced_pod(namespace, pod)
    name = pod["metadata"]["name"]

    def finished() -> bool:
        phase = core.read_namespaced_pod(name, namespace).status.phase
        return phase in ("Succeeded", "Failed")

    wait_for(f"{name} to finish", finished, timeout=120, interval=1)
    log = pod_log(core, namespace, name)
    result: dict[str, Any] = json.loads(log.strip().splitlines()[-1])
    return result


def test_only_the_bound_account_predicts_and_the_rate_limit_holds(
    models: Models, api_client: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(api_client)
    grant_predict(api_client, namespace, "iris-auth", bound="bound", unbound="unbound")
    models.create(
        "iris-auth",
        {
            "model": {"uri": FILE_URI, "version": "1"},
            "auth": {"mode": "Kubernetes"},
            "server": {"rateLimit": {"requestsPerSecond": 2, "burst": 5}},
        },
    )
    models.wait_condition("iris-auth", "Ready", timeout=180)
    url = f"http://{models.cluster_ip('iris-auth')}/v1/models/iris-auth:predict"

    bound = _call_as(core, namespace, "bound", url, 30)
    allowed = [s for s in bound["statuses"] if s == 200]
    limited = [s for s in bound["statuses"] if s == 429]
    assert len(allowed) + len(limited) == 30, bound
    assert 5 <= len(allowed) <= 12, bound  # the burst, and what 2/s refills meanwhile
    assert limited, bound
    assert int(bound["retry_after"]) >= 1, bound
    assert bound["anonymous"] == 401, bound

    unbound = _call_as(core, namespace, "unbound", url, 3)
    assert unbound["statuses"] == [403, 403, 403], unbound  # within the burst: RBAC decides
    assert unbound["anonymous"] == 401, unbound
