# modeldeploy: a Kubernetes operator that serves scikit-learn models.
# `make help` lists the targets.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
KUBECONFIG_LOCAL := $(CURDIR)/.cluster/kubeconfig
IMAGE ?= modeldeploy/modelserver:0.1.0
CONTAINER_TOOL ?= $(shell command -v docker || command -v podman || command -v buildah)

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"} /^[a-zA-Z0-9_-]+:.*##/ {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

##@ Development

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[operator,server,dev]'
	touch $@

.PHONY: install
install: $(VENV)/.installed ## Create .venv and install the project with everything for development.

.PHONY: test
test: install manifests-check lint binaries kserve-client ## The suite CI runs: generated-file freshness, lint, unit, server and integration tests.
	$(PY) -m pytest

.PHONY: test-unit
test-unit: install kserve-client ## Only the tests that need no cluster.
	$(PY) -m pytest -m "not integration and not e2e"

.PHONY: kserve-client
kserve-client: install ## KServe's Python client in its own cached venv (server tests; the benchmark reuses it).
	$(PY) -c 'import sys; from bench.server.venvs import main; sys.exit(main(["kserve"]))'

.PHONY: lint
lint: install ## ruff, mypy (strict) and the operator's layer contract (import-linter).
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

.PHONY: fmt
fmt: install ## Format the code with ruff.
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

.PHONY: manifests
manifests: install ## Regenerate crds/ from the typed API models.
	$(PY) -m modeldeploy.crdgen --out crds/ --docs docs/

.PHONY: manifests-check
manifests-check: install ## Fail when crds/ is stale.
	$(PY) -m modeldeploy.crdgen --check crds/ --docs docs/

##@ Cluster

.PHONY: binaries
binaries: install ## Build (or reuse from ~/.cache) the pinned Kubernetes, etcd and KWOK binaries.
	$(PY) -m localcluster build

.PHONY: cluster-up
cluster-up: install ## Start the local control plane; kubeconfig at .cluster/kubeconfig.
	$(PY) -m localcluster up

.PHONY: cluster-down
cluster-down: ## Stop the local control plane (and a demo operator) and remove its state.
	@if [ -f .cluster/operator.pid ]; then kill $$(cat .cluster/operator.pid) 2>/dev/null || true; rm -f .cluster/operator.pid; fi
	@if [ -x $(PY) ]; then $(PY) -m localcluster down; fi

# `make cluster-up REAL_NODE=1` (and `make binaries`, `make demo`): a real node, containerd,
# kubelet, kube-proxy, kube-router and metrics-server, instead of KWOK's fake nodes; needs root.
ifneq ($(filter 1 true yes,$(REAL_NODE)),)
export LOCALCLUSTER_REAL_NODE := 1
endif

.PHONY: node-deps
node-deps: install ## Install the real node's Debian packages (containerd, runc, CNI plugins, buildah, ...; root).
	$(PY) -m localcluster deps

.PHONY: node-images
node-images: install ## Build (or reuse from ~/.cache) the real node's images: pause, Debian python base, model server.
	$(PY) -m localcluster images

.PHONY: e2e
e2e: install ## End-to-end tests on a real node (root): packages, binaries and images first, then pytest -m e2e.
	$(PY) -m localcluster deps
	$(PY) -m localcluster build --real-node
	$(PY) -m localcluster images
	$(PY) -m pytest -m e2e tests/e2e

.PHONY: run
run: install ## Run the operator in the foreground against KUBECONFIG (default: the local cluster's).
	KUBECONFIG=$${KUBECONFIG:-$(KUBECONFIG_LOCAL)} $(PY) -m modeldeploy

.PHONY: demo
demo: install ## The main job: local cluster, CRD, operator, samples, status.
	hack/demo.sh

##@ Model server

.PHONY: image
image: ## Build the model server image (docker, podman or buildah).
	@test -n "$(CONTAINER_TOOL)" || { echo "make image needs docker, podman or buildah on PATH" >&2; exit 1; }
	$(CONTAINER_TOOL) build -t $(IMAGE) -f server_image/Dockerfile server_image

.PHONY: operator-image
operator-image: ## Build the operator image.
	@test -n "$(CONTAINER_TOOL)" || { echo "make operator-image needs docker, podman or buildah on PATH" >&2; exit 1; }
	$(CONTAINER_TOOL) build -t modeldeploy/operator:0.1.0 -f operator/Dockerfile .

.PHONY: bench
bench: install ## The benchmarks (operator on the local cluster; model server against KServe and MLServer).
	$(PY) -m bench
