#!/usr/bin/env bash
# `make demo`: the whole loop on the embedded defaults (run folder var/, or
# FEEDRANK_PATHS__HOME): Kafka up → simulated backfill → retrain DAG (airflow dags test) →
# closed-loop serving with an online experiment → landing → summary → services down.
# Extra options go through DEMO_ARGS, e.g. DEMO_ARGS="--users 2000 --serve-s 120", or
# DEMO_ARGS="--today 2026-12-07" to run on that day instead of the wall clock's.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
py=.venv/bin/python
trap '"$py" -m feedrank.services down' EXIT
# shellcheck disable=SC2086
.venv/bin/feedrank demo ${DEMO_ARGS:-}
