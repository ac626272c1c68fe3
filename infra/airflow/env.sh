# Source this to run Airflow commands against feedrank's run folder:
#   source infra/airflow/env.sh && .venv/bin/airflow dags list
# The values come from feedrank.services.airflow_env (the one definition tests also use).
_feedrank_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
eval "$("$_feedrank_root/.venv/bin/python" -m feedrank.services airflow-env)"
unset _feedrank_root
