#!/usr/bin/env bash
# make demo: the main job on the embedded local cluster.
# Cluster up (building the binaries the first time), CRD installed, operator running, the samples
# applied, waits for Ready, shows the resources. Safe to run again: everything is idempotent and
# a previous demo operator is replaced.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
NAMESPACE=${DEMO_NAMESPACE:-demo}
# REAL=1 (make demo REAL=1, or REAL_NODE=1): a real node runs the pods (root; the first run builds
# the kubelet and the images, ~25 min cold), and the demo ends with a prediction from a pod.
REAL=${REAL:-${REAL_NODE:-}}
case "$REAL" in 1|true|yes) REAL=1; export LOCALCLUSTER_REAL_NODE=1 ;; *) REAL= ;; esac
STATE=.cluster
OPERATOR_PID=$STATE/operator.pid
OPERATOR_LOG=$STATE/logs/operator.log

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "Building (or reusing) the pinned Kubernetes, etcd and KWOK binaries"
$PY -m localcluster build

step "Starting the local control plane${REAL:+ with a real node (containerd, kubelet, kube-proxy)}"
$PY -m localcluster up
eval "$($PY -m localcluster env)"
export KUBECONFIG

step "Installing the ModelDeployment CRD"
kubectl apply --server-side --field-manager=modeldeploy-demo -f crds/serving.modeldeploy.io_modeldeployments.yaml
kubectl wait --for=condition=Established crd/modeldeployments.serving.modeldeploy.io --timeout=60s

step "Starting the operator (log: $OPERATOR_LOG)"
if [[ -f $OPERATOR_PID ]] && kill -0 "$(cat "$OPERATOR_PID")" 2>/dev/null; then
  kill "$(cat "$OPERATOR_PID")" && sleep 1
fi
mkdir -p "$STATE/logs"
nohup $PY -m modeldeploy --metrics-port 0 --health-port 0 >"$OPERATOR_LOG" 2>&1 &
echo $! >"$OPERATOR_PID"
sleep 2
kill -0 "$(cat "$OPERATOR_PID")" || { tail -n 30 "$OPERATOR_LOG"; exit 1; }

step "Applying the samples to namespace $NAMESPACE"
kubectl create namespace "$NAMESPACE" --dry-run=client -o yaml | kubectl apply -f -
if [[ -n $REAL ]]; then
  # The digest-pinned sample downloads from models.example.com: nothing leaves this machine.
  kubectl apply -n "$NAMESPACE" -f manifests/samples/fixed-replicas.yaml -f manifests/samples/autoscaled.yaml
else
  kubectl apply -n "$NAMESPACE" -k manifests/samples/
fi

step "Waiting for Ready"
kubectl wait -n "$NAMESPACE" --for=condition=Ready mdep --all --timeout="$([[ -n $REAL ]] && echo 300s || echo 120s)"

step "kubectl get mdep -o wide"
kubectl get mdep -n "$NAMESPACE" -o wide
step "Their children"
kubectl get deploy,svc,hpa,networkpolicy,pdb,pods -n "$NAMESPACE" -l app.kubernetes.io/managed-by=modeldeploy

if [[ -n $REAL ]]; then
  step "A prediction from inside the cluster (a pod in $NAMESPACE calls the iris Service)"
  IP=$(kubectl get svc iris -n "$NAMESPACE" -o jsonpath='{.spec.clusterIP}')
  kubectl delete pod demo-client -n "$NAMESPACE" --ignore-not-found --wait=true >/dev/null
  # Retries for a few seconds: a new pod's IP reaches the NetworkPolicy's ipsets just after it starts.
  kubectl run demo-client -n "$NAMESPACE" --rm -i --quiet --restart=Never \
    --image=modeldeploy/modelserver:0.1.0 --image-pull-policy=Never --command -- python -c "
import json, time, urllib.request
body = json.dumps({'instances': [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}).encode()
for attempt in range(30):
    try:
        req = urllib.request.Request('http://$IP/v1/models/iris:predict', data=body,
                                     headers={'Content-Type': 'application/json'})
        print('POST http://iris.$NAMESPACE ($IP)/v1/models/iris:predict ->',
              urllib.request.urlopen(req, timeout=5).read().decode())
        break
    except OSError:
        time.sleep(0.5)
else:
    raise SystemExit('no answer from the iris Service')
"
fi

cat <<MSG

The demo is running. To look around:
  eval "\$($PY -m localcluster env)"        # KUBECONFIG and kubectl for this shell
  kubectl describe mdep iris -n $NAMESPACE
  kubectl patch mdep iris -n $NAMESPACE --type merge -p '{"spec":{"model":{"version":"2"}}}'
  kubectl get mdep -n $NAMESPACE -w
  tail -f $OPERATOR_LOG

$(if [[ -n $REAL ]]; then echo "(The node is real: containerd runs the pods; kubectl logs/exec/top work.)"; else echo "(The local nodes are KWOK fakes: pods are scheduled and marked Ready, but no container runs.)"; fi)
To stop everything: make cluster-down
MSG
