#!/usr/bin/env bash
# Start the local Spark standalone cluster (master + spark.cluster_workers workers, from the
# pip package) on 127.0.0.1; pid files and logs go to the run folder. Idempotent.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
exec "$root/.venv/bin/python" -m feedrank.services up --no-kafka --spark-cluster
