"""The one SparkSession factory every job uses."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from feedrank.config import Settings, get_settings


def connector_jars(settings: Settings | None = None) -> list[Path]:
    """Jars of the spark-sql-kafka connector fetched by ``infra/kafka/pom.xml`` (may be [])."""
    settings = settings or get_settings()
    folder = settings.paths.cache / "spark-jars"
    return sorted(folder.glob("*.jar")) if folder.is_dir() else []


def get_spark(app_name: str = "feedrank", settings: Settings | None = None):
    """A SparkSession on the configured master: UTC, microsecond Parquet, loopback-bound.

    Python workers run this interpreter (Spark would otherwise start ``python3`` from PATH,
    outside the venv).
    """
    from pyspark.sql import SparkSession

    settings = settings or get_settings()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    jars = ",".join(str(p) for p in connector_jars(settings))
    local_dir = settings.paths.home / "spark-local"
    local_dir.mkdir(parents=True, exist_ok=True)
    builder = (
        SparkSession.builder.master(settings.spark.master)
        .appName(app_name)
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
        .config("spark.sql.shuffle.partitions", str(settings.spark.shuffle_partitions))
        .config("spark.driver.memory", settings.spark.driver_memory)
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.local.dir", str(local_dir))
        .config("spark.ui.enabled", "false")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.executorEnv.PYSPARK_PYTHON", sys.executable)
    )
    if jars:
        builder = builder.config("spark.jars", jars)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark
