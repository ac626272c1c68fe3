#!/usr/bin/env bash
# `make demo`: the platform end to end on the embedded defaults (run folder var/, or
# FEEDRANK_PATHS__HOME). Each capability appends its step to STEPS below, in data-flow order;
# a step is a shell function, printed with its number before it runs, and the demo stops at
# the first failing step. `make down` stops the services afterwards.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
py=.venv/bin/python
feedrank=.venv/bin/feedrank

step_services() {
  # Kafka (and Redis / Spark cluster when the profile needs them), topics provisioned.
  "$py" -m feedrank.services up
  "$py" -m feedrank.services status
}

step_config() {
  # The resolved configuration every later step runs with.
  "$feedrank" config | head -n 40
  echo "  ... (full config: feedrank config)"
}

STEPS=(
  step_services
  step_config
)

started=$SECONDS
for i in "${!STEPS[@]}"; do
  echo
  echo "=== [demo $((i + 1))/${#STEPS[@]}] ${STEPS[$i]#step_} ==="
  "${STEPS[$i]}"
done
echo
echo "demo finished in $((SECONDS - started)) s; logs and data under $("$py" -c 'from feedrank.config import get_settings; print(get_settings().paths.home)'); stop services with: make down"
