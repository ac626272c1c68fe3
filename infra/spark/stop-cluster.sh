#!/usr/bin/env bash
# Stop the local Spark standalone cluster started by start-cluster.sh. Idempotent.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
exec "$root/.venv/bin/python" -m feedrank.services down --no-kafka --no-redis
