"""KWOK configuration: which nodes it fakes and the stages that move nodes and pods along.

With no kubelet, nothing would ever mark a node Ready or a pod Running. KWOK's stages do:
a node that is not Ready becomes Ready; a scheduled pod gets an IP and becomes Running and
Ready at once; a pod being deleted loses its finalizers and is removed (a kubelet's job);
a Job's running pod completes. KWOK renews each node's Lease itself
(``nodeLeaseDurationSeconds``), so the node-lifecycle controller never taints the nodes
unreachable and only a slow status refresh is needed.
"""

from __future__ import annotations

from pathlib import Path

#: Nodes carrying this annotation are faked by KWOK; a real kubelet's node is left alone.
NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
NODE_LABEL = ("type", "kwok")
POD_CIDR = "10.244.0.0/16"

_OPTIONS = """\
apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokConfiguration
options:
  manageAllNodes: false
  manageNodesWithAnnotationSelector: {annotation}
  nodeIP: 127.0.0.1
  cidr: {cidr}
  nodeLeaseDurationSeconds: 40
  serverAddress: 127.0.0.1:{port}
"""

_STAGE = """\
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: localcluster-{name}
spec:
  resourceRef:
    apiGroup: v1
    kind: {kind}
  selector:
    matchExpressions:
"""


def _stage(name: str, kind: str, rest: str) -> str:
    """A Stage for ``kind`` objects; ``rest`` goes on from the selector's first expression."""
    return _STAGE.format(name=name, kind=kind) + rest


# The node's conditions as KWOK knows them, with the heartbeat set to now.
_NODE_CONDITIONS = """\
      {{ $now := Now }}
      conditions:
      {{ range NodeConditions }}
      - type: {{ .type | Quote }}
        status: {{ .status | Quote }}
        reason: {{ .reason | Quote }}
        message: {{ .message | Quote }}
        lastHeartbeatTime: {{ $now | Quote }}
        lastTransitionTime: {{ $now | Quote }}
      {{ end }}
"""

# render() fills in KUBELET_VERSION.
_NODE_READY = _stage(
    "node-ready",
    "Node",
    """\
    - key: '.status.conditions.[] | select( .type == "Ready" ) | .status'
      operator: NotIn
      values: ['True']
  next:
    statusTemplate: |
"""
    + _NODE_CONDITIONS
    + """\
      addresses:
      - type: InternalIP
        address: {{ NodeIP | Quote }}
      - type: Hostname
        address: {{ NodeName | Quote }}
      allocatable:
      {{ with .status.allocatable }}{{ YAML . 1 }}{{ else }}
        cpu: "8"
        memory: 32Gi
        pods: "110"
      {{ end }}
      capacity:
      {{ with .status.capacity }}{{ YAML . 1 }}{{ else }}
        cpu: "8"
        memory: 32Gi
        pods: "110"
      {{ end }}
      nodeInfo:
        architecture: amd64
        operatingSystem: linux
        kubeletVersion: KUBELET_VERSION
        kubeProxyVersion: KUBELET_VERSION
        containerRuntimeVersion: kwok-{{ Version }}
        kernelVersion: kwok-{{ Version }}
        osImage: kwok
        machineID: ""
        systemUUID: ""
        bootID: ""
      phase: Running
""",
)

# Refresh the conditions' heartbeat now and then; the Lease carries liveness.
_NODE_HEARTBEAT = _stage(
    "node-heartbeat",
    "Node",
    """\
    - key: '.status.conditions.[] | select( .type == "Ready" ) | .status'
      operator: In
      values: ['True']
  delay:
    durationMilliseconds: 60000
    jitterDurationMilliseconds: 70000
  next:
    statusTemplate: |
"""
    + _NODE_CONDITIONS
    + """\
  immediateNextStage: true
""",
)

_POD_RUNNING = _stage(
    "pod-running",
    "Pod",
    """\
    - key: '.metadata.deletionTimestamp'
      operator: DoesNotExist
    - key: '.status.podIP'
      operator: DoesNotExist
  next:
    statusTemplate: |
      {{ $now := Now }}
      phase: Running
      startTime: {{ $now | Quote }}
      hostIP: {{ NodeIPWith .spec.nodeName | Quote }}
      {{ $hostNet := or .spec.hostNetwork false }}
      {{ $uid := or .metadata.uid "" }}
      {{ $name := or .metadata.name "" }}
      {{ $ns := or .metadata.namespace "" }}
      podIP: {{ PodIPWith .spec.nodeName $hostNet $uid $name $ns | Quote }}
      conditions:
      {{ range list "PodScheduled" "Initialized" "ContainersReady" "Ready" }}
      - type: {{ . }}
        status: "True"
        lastTransitionTime: {{ $now | Quote }}
      {{ end }}
      {{ range .spec.readinessGates }}
      - type: {{ .conditionType | Quote }}
        status: "True"
        lastTransitionTime: {{ $now | Quote }}
      {{ end }}
      initContainerStatuses:
      {{ range .spec.initContainers }}
      - name: {{ .name | Quote }}
        image: {{ .image | Quote }}
        ready: true
        restartCount: 0
        {{ if eq .restartPolicy "Always" }}
        started: true
        state:
          running:
            startedAt: {{ $now | Quote }}
        {{ else }}
        state:
          terminated:
            exitCode: 0
            reason: Completed
            startedAt: {{ $now | Quote }}
            finishedAt: {{ $now | Quote }}
        {{ end }}
      {{ end }}
      containerStatuses:
      {{ range .spec.containers }}
      - name: {{ .name | Quote }}
        image: {{ .image | Quote }}
        ready: true
        started: true
        restartCount: 0
        state:
          running:
            startedAt: {{ $now | Quote }}
      {{ end }}
""",
)

_POD_JOB_COMPLETE = _stage(
    "pod-job-complete",
    "Pod",
    """\
    - key: '.metadata.deletionTimestamp'
      operator: DoesNotExist
    - key: '.status.phase'
      operator: In
      values: ['Running']
    - key: '.metadata.ownerReferences.[].kind'
      operator: In
      values: ['Job']
  next:
    statusTemplate: |
      {{ $now := Now }}
      phase: Succeeded
      containerStatuses:
      {{ range .spec.containers }}
      - name: {{ .name | Quote }}
        image: {{ .image | Quote }}
        ready: false
        started: false
        restartCount: 0
        state:
          terminated:
            exitCode: 0
            reason: Completed
            startedAt: {{ $now | Quote }}
            finishedAt: {{ $now | Quote }}
      {{ end }}
""",
)

# What a kubelet does once a pod is marked for deletion: stop it and confirm with a delete.
_POD_DELETE = _stage(
    "pod-delete",
    "Pod",
    """\
    - key: '.metadata.deletionTimestamp'
      operator: Exists
  next:
    finalizers:
      empty: true
    delete: true
""",
)


def render(*, server_port: int, kubelet_version: str) -> str:
    """The whole ``--config`` file: options plus every stage, as one multi-document YAML."""
    annotation = "=".join(NODE_ANNOTATION)
    docs = [
        _OPTIONS.format(annotation=annotation, cidr=POD_CIDR, port=server_port),
        _NODE_READY.replace("KUBELET_VERSION", kubelet_version),
        _NODE_HEARTBEAT,
        _POD_RUNNING,
        _POD_JOB_COMPLETE,
        _POD_DELETE,
    ]
    return "---\n".join(docs)


def write(path: Path, *, server_port: int, kubelet_version: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(server_port=server_port, kubelet_version=kubelet_version))
    return path


def node_manifest(name: str) -> dict[str, object]:
    """A fake, untainted Node that KWOK will manage; status is kept by the ready stage."""
    resources = {"cpu": "8", "memory": "32Gi", "pods": "110"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {NODE_ANNOTATION[0]: NODE_ANNOTATION[1]},
            "labels": {
                NODE_LABEL[0]: NODE_LABEL[1],
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "node-role.kubernetes.io/agent": "",
            },
        },
        "spec": {},
        "status": {"allocatable": resources, "capacity": resources},
    }
