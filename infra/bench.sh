#!/usr/bin/env bash
# `make bench`: run every benchmark registered under `feedrank bench` and print its table.
# Benchmarks are added by capability modules (feedrank/cli.py COMMAND_MODULES); this loop
# picks up whatever exists, so it never needs editing when one is added.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
py=.venv/bin/python

mapfile -t benches < <("$py" - <<'PY'
import typer.main

from feedrank.cli import bench_app

if bench_app.registered_commands or bench_app.registered_groups:
    for name in sorted(typer.main.get_command(bench_app).commands):
        print(name)
PY
)
if [ "${#benches[@]}" -eq 0 ]; then
  echo "[bench] no benchmarks registered yet (feedrank bench has no subcommands)"
  exit 0
fi
reports="$("$py" -c 'from feedrank.config import get_settings; print(get_settings().paths.reports)')"
mkdir -p "$reports"
# Benchmarks of the streaming path need the profile's services; the ones started here are
# stopped again on exit (success or not), the ones already running are left running.
up_log="$("$py" -m feedrank.services up 2>&1)" || { echo "$up_log"; exit 1; }
echo "$up_log"
started=()
down_flags=()
for service in kafka redis spark-cluster; do
  if grep -q "${service}: started" <<<"$up_log"; then
    started+=("$service")
    down_flags+=("--${service}")
  else
    down_flags+=("--no-${service}")
  fi
done
if [ "${#started[@]}" -gt 0 ]; then
  trap 'echo "[bench] stopping what it started: ${started[*]}"; "$py" -m feedrank.services down "${down_flags[@]}"' EXIT
fi
for i in "${!benches[@]}"; do
  name="${benches[$i]}"
  echo "[bench $((i + 1))/${#benches[@]}] feedrank bench $name"
  .venv/bin/feedrank bench "$name" --json "$reports/bench-$name.json"
done
