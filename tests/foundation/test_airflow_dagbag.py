"""Every DAG file in dags/ imports without errors (passes with zero DAGs too)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from feedrank.config import PROJECT_ROOT


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_dagbag_has_no_import_errors() -> None:
    # conftest put AIRFLOW_HOME / DAGS_FOLDER in the environment before Airflow was imported.
    assert Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"]) == PROJECT_ROOT / "dags"
    # Parse as the dag processor does: the folder is a bundle, put on sys.path, so DAG files
    # may import their helper modules (dags/feedrank_tasks.py) by name.
    from airflow.dag_processing.dagbag import BundleDagBag

    dags = PROJECT_ROOT / "dags"
    bag = BundleDagBag(dag_folder=dags, bundle_path=dags, bundle_name="dags-folder")
    assert bag.import_errors == {}
    for dag_id, dag in bag.dags.items():
        assert dag.fileloc.startswith(str(dags)), dag_id
