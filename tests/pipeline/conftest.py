"""Fixtures of the batch-pipeline tests: one tiny world, its features and training run.

Built once per session on the shared ``spark`` fixture (Spark stages dominate the runtime on
2 cores, so every test reads the same outputs instead of rebuilding them).
"""

from __future__ import annotations

import pytest
from pipeline_helpers import END, FEATURE_START, START, PipelineRun, add_edge_cases, settings_at

from feedrank.config import Settings


@pytest.fixture(scope="session")
def pipeline_run(
    spark, settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> PipelineRun:
    """A 3-day world written to a fresh lake, its feature tables and its training run.

    About 80 requests of 35 candidates: the training run has 1,264 rows, more than the
    1,000 the parity test must compare. The rows come from candidates rather than requests:
    Spark's cost is mostly per job, the parity test's mostly per request (a materialization
    and an online read each).
    """
    import synthetic_lake

    from jobs import features, training_data

    cfg = settings_at(settings, tmp_path_factory.mktemp("pipeline"))
    world = synthetic_lake.generate_world(
        START, (END - START).days + 1, users=14, seed=3, requests_per_user_day=2.0, candidates=35
    )
    add_edge_cases(world)
    synthetic_lake.write_world(cfg.paths.lake, world)
    features.run_features(spark, cfg, FEATURE_START, END)
    run_dir = training_data.run_training_data(spark, cfg, START, END)
    return PipelineRun(cfg, world, run_dir)
