# feedrank: one-command setup, local services, tests, demo, benchmarks.
# `make help` lists the targets. Every tool is called from .venv/bin explicitly.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PY := .venv/bin/python
# uv: the one on PATH, else a private copy bootstrapped with pip into .cache/uv-venv.
UV_VERSION := 0.13.8
UV_ON_PATH := $(shell command -v uv 2>/dev/null)
UV := $(if $(UV_ON_PATH),$(UV_ON_PATH),.cache/uv-venv/bin/uv)
UV_DEP := $(if $(UV_ON_PATH),,.cache/uv-venv/bin/uv)
# Only the registries are reachable: never let uv download a Python build.
export UV_PYTHON_DOWNLOADS := never
export UV_PYTHON := python3.11
# Bytecode is written when a module is first imported, not compiled for every package at
# install: the demo imports about 4k of the venv's 15k modules, and `uv sync
# --compile-bytecode` spent 33 CPU-s on all of them (docs/performance.md). These machines
# set PYTHONDONTWRITEBYTECODE, which would make every process recompile what it imports.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: help setup up down status test test-unit test-long test-cluster lint demo bench chaos airflow quality-curve prometheus mlflow-ui helm k8s-check

help: ## List the targets
	@echo "feedrank — make targets (FEEDRANK_PROFILE=local|redis|cluster|secure picks the services):"
	@grep -hE '^[a-z][a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) \
	  | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-14s %s\n", $$1, $$2}'

.cache/uv-venv/bin/uv:
	@echo "[setup] uv not on PATH: installing uv==$(UV_VERSION) into .cache/uv-venv"
	python3.11 -m venv .cache/uv-venv
	.cache/uv-venv/bin/pip install --disable-pip-version-check -q uv==$(UV_VERSION)

# The stamp is newer than the lock file once `uv sync` has installed exactly that lock.
.venv/.feedrank-synced: uv.lock pyproject.toml | $(UV_DEP)
	@echo "[setup] installing the locked dependencies into .venv (uv sync --frozen)"
	$(UV) sync --frozen
	@touch $@

# helm, built from the Go module proxy (the only place it is served here), once per checkout.
HELM_VERSION := v4.3.2
HELM := .cache/go-bin/helm
$(HELM):
	@echo "[setup] building helm $(HELM_VERSION) with go install (a few minutes, once)"
	GOBIN=$(abspath .cache/go-bin) go install helm.sh/helm/v4/cmd/helm@$(HELM_VERSION)

helm: $(HELM) ## Build helm from the Go module proxy into .cache/go-bin (once)

setup: .venv/.feedrank-synced ## venv + locked deps, Kafka/Spark jars, Airflow DB, prometheus (cached)
	@$(PY) -m feedrank.services setup
	@$(PY) -m feedrank.prometheus install

up: setup ## Start Kafka (+ Redis for redis/cluster/secure; cluster: 3 brokers, Spark cluster, 2 serve; secure: SCRAM + ACLs)
	@$(PY) -m feedrank.services up

down: ## Stop every service started from the run folder (var/ unless FEEDRANK_PATHS__HOME)
	@if [ -x $(PY) ]; then $(PY) -m feedrank.services airflow-down; fi
	@if [ -x $(PY) ]; then $(PY) -m feedrank.services down; fi
	@if [ -x $(PY) ]; then $(PY) -m feedrank.prometheus down; fi

status: ## Show which services run and answer
	@$(PY) -m feedrank.services status

test: setup $(HELM) ## Run the test suite, all but the `cluster` DAG run and the `long` checks (tests start real services themselves)
	$(PY) -m pytest

test-unit: setup ## Run only the tests marked unit (no services)
	$(PY) -m pytest -m unit

test-long: setup ## Checks on multi-week synthetic worlds: feature history summaries and kept snapshots (1-4 min here, not in `make test`)
	$(PY) -m pytest -m long

test-cluster: setup ## The retrain DAG on the cluster profile: 3 brokers, Redis, Spark master + 2 workers (8-11 min here, not in `make test`)
	$(PY) -m pytest -m cluster

k8s-check: setup $(HELM) ## Render the Helm chart, validate it (Kubernetes, Strimzi, KEDA, spark-operator), lint the Dockerfile
	$(PY) -m pytest tests/deploy -q

lint: setup ## ruff check + ruff format --check + Airflow rules on dags/
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/ruff check --select AIR dags/

demo: setup ## Run the platform end to end on the embedded defaults
	bash infra/demo.sh

bench: setup ## Run every `feedrank bench` benchmark and print its table
	bash infra/bench.sh

# The cluster profile's brokers; the bench world's Feast offline store is the file one (the
# fault is Kafka's; a Spark master would only take cores from the serve processes).
chaos: setup ## Fault scenarios (broker/serve kill -9, Redis stop, corrupt model, full disk) under load (cluster profile; CHAOS_ARGS='--scenario X'; docs/reliability.md)
	FEEDRANK_PROFILE=cluster FEEDRANK_FEAST__OFFLINE_STORE=file $(PY) -m serving.chaos_bench $(CHAOS_ARGS)

quality-curve: setup ## Learning curve: model vs ceiling RCE, 2/4/8 days × 1k/2k/4k users, and its fit (long)
	.venv/bin/feedrank quality-curve $(CURVE_ARGS)

prometheus: setup ## Start Prometheus (127.0.0.1:observability.prometheus_port) + batch-metrics
	@$(PY) -m feedrank.prometheus up

mlflow-ui: setup ## Browse MLflow (runs, metrics, plots, champion) on 127.0.0.1:mlflow.ui_port
	.venv/bin/feedrank mlflow-ui

airflow: setup ## Start Airflow standalone (dags/, 127.0.0.1:airflow.port); `make down` stops it
	@$(PY) -m feedrank.services airflow-up
