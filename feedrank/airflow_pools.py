"""The Airflow pools the project declares (``infra/airflow/pools.json``), and their import.

``feedrank_online_store`` has one slot: the retrain DAG's ``materialize`` and the hourly
``feature_materialization`` both write the Feast online store, and Airflow's scheduler runs
at most one task of a pool per slot, so the two never write at the same time (a run of one
waits, queued, for the other). ``feedrank.services.airflow_migrate`` imports the file into
each run folder's metadata DB (``airflow pools import``, again whenever the file changes):
the scheduler does not schedule a task whose pool does not exist.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from feedrank.config import PROJECT_ROOT
from feedrank.errors import FeedrankError

ONLINE_STORE_POOL = "feedrank_online_store"
POOLS_FILE = PROJECT_ROOT / "infra" / "airflow" / "pools.json"


def declared_pools() -> dict[str, dict[str, Any]]:
    """Pool name -> ``{"slots", "description", "include_deferred"}`` as the project declares."""
    return json.loads(POOLS_FILE.read_text())


def ensure_pools(env: Mapping[str, str]) -> bool:
    """Import the declared pools into the metadata DB of ``env`` unless already imported.

    Args:
        env: The Airflow environment of a run folder (``feedrank.services.airflow_env``).

    Returns:
        True if ``airflow pools import`` ran.
    """
    stamp = Path(env["AIRFLOW_HOME"]) / ".pools"
    digest = hashlib.sha256(POOLS_FILE.read_bytes()).hexdigest()
    if stamp.is_file() and stamp.read_text().strip() == digest:
        return False
    airflow = str(Path(sys.executable).parent / "airflow")
    result = subprocess.run(
        [airflow, "pools", "import", str(POOLS_FILE)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        reason = (result.stderr.strip() or result.stdout.strip()).splitlines()[-1:]
        raise FeedrankError(f"airflow pools import failed: {' '.join(reason)}")
    stamp.write_text(digest + "\n")
    return True
