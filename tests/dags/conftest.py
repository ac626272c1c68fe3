"""Fixtures of the DAG tests: the DAGs as Airflow parses them, and a run folder per module for
``dag.test()`` (run in a child process by :mod:`dag_helpers`)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from feedrank.config import PROJECT_ROOT

if TYPE_CHECKING:
    from airflow.dag_processing.dagbag import BundleDagBag

DAGS_DIR = PROJECT_ROOT / "dags"
# The dag processor puts the bundle (dags/) on sys.path; the tests import feedrank_tasks too.
if str(DAGS_DIR) not in sys.path:
    sys.path.insert(0, str(DAGS_DIR))


@pytest.fixture(scope="session")
def dagbag() -> BundleDagBag:
    """The dags/ folder parsed as the dag processor parses it (a bundle on ``sys.path``)."""
    from airflow.dag_processing.dagbag import BundleDagBag

    return BundleDagBag(dag_folder=DAGS_DIR, bundle_path=DAGS_DIR, bundle_name="dags-folder")


@pytest.fixture(scope="module")
def dag_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh run folder for one test module's DAG runs."""
    yield tmp_path_factory.mktemp("feedrank-dags")
