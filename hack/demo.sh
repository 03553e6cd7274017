#!/usr/bin/env bash
# make demo: the main job on the embedded local cluster.
# Cluster up (building the binaries the first time), CRD installed, operator running, the samples
# applied, waits for Ready, shows the resources. Safe to run again: everything is idempotent and
# a previous demo operator is replaced.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
NAMESPACE=${DEMO_NAMESPACE:-demo}
STATE=.cluster
OPERATOR_PID=$STATE/operator.pid
OPERATOR_LOG=$STATE/logs/operator.log

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "Building (or reusing) the pinned Kubernetes, etcd and KWOK binaries"
$PY -m localcluster build

step "Starting the local control plane"
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
kubectl apply -n "$NAMESPACE" -k manifests/samples/

step "Waiting for Ready"
kubectl wait -n "$NAMESPACE" --for=condition=Ready mdep --all --timeout=120s

step "kubectl get mdep -o wide"
kubectl get mdep -n "$NAMESPACE" -o wide
step "Their children"
kubectl get deploy,svc,hpa,networkpolicy,pdb,pods -n "$NAMESPACE" -l app.kubernetes.io/managed-by=modeldeploy

cat <<MSG

The demo is running. To look around:
  eval "\$($PY -m localcluster env)"        # KUBECONFIG and kubectl for this shell
  kubectl describe mdep iris -n $NAMESPACE
  kubectl patch mdep iris -n $NAMESPACE --type merge -p '{"spec":{"model":{"version":"2"}}}'
  kubectl get mdep -n $NAMESPACE -w
  tail -f $OPERATOR_LOG

(The local nodes are KWOK fakes: pods are scheduled and marked Ready, but no container runs.)
To stop everything: make cluster-down
MSG
