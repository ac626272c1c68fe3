"""The one SparkSession factory every job uses.

Precedence, as a team running Spark expects: a property set by ``spark-submit`` (``--master``,
``--conf``, ``--driver-memory`` …) or in ``spark-defaults.conf`` wins; the profile's value
(``spark.*`` settings) applies only where neither says anything. So the same job runs
in-process on the embedded defaults and under ``spark-submit`` against a team's cluster
(``jobs/spark_entry.py`` is the entry point it launches).
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
from collections.abc import Iterable
from pathlib import Path

from feedrank.config import Settings, get_settings

log = logging.getLogger("feedrank.spark")

# `key value`, `key=value` or `key: value`, as java.util.Properties reads a line.
_PROPERTY = re.compile(r"^\s*([^\s=:#!]+)\s*[\s=:]\s*(.*?)\s*$")
SHUFFLE_PARTITIONS = "spark.sql.shuffle.partitions"


def connector_jars(settings: Settings | None = None) -> list[Path]:
    """Jars of the spark-sql-kafka connector fetched by ``infra/kafka/pom.xml`` (may be [])."""
    settings = settings or get_settings()
    folder = settings.paths.cache / "spark-jars"
    return sorted(folder.glob("*.jar")) if folder.is_dir() else []


def event_log_dir(settings: Settings) -> Path:
    """Where the event log goes when ``spark.event_log`` is on (a history server reads it)."""
    return settings.paths.home / "spark-events"


def profile_conf(app_name: str, settings: Settings) -> dict[str, str]:
    """The Spark properties the profile asks for: master, memory, JVM options, shuffle
    compression, loopback addresses, UTC."""
    conf = {
        "spark.master": settings.spark.master,
        "spark.app.name": app_name,
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
        SHUFFLE_PARTITIONS: str(settings.spark.shuffle_partitions),
        "spark.driver.memory": settings.spark.driver_memory,
        "spark.driver.host": "127.0.0.1",
        "spark.driver.bindAddress": "127.0.0.1",
        "spark.local.dir": str(settings.paths.home / "spark-local"),
        "spark.shuffle.compress": str(settings.spark.shuffle_compress).lower(),
        "spark.shuffle.spill.compress": str(settings.spark.shuffle_compress).lower(),
        "spark.ui.enabled": "false",
        # PySpark starts as a "shell", which turns the stage progress bar on; off a terminal
        # (task logs, `make demo > log`) its carriage-return redraws are all the log would hold.
        "spark.ui.showConsoleProgress": str(sys.stderr.isatty()).lower(),
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.executorEnv.PYSPARK_PYTHON": sys.executable,
    }
    jars = ",".join(str(p) for p in connector_jars(settings))
    if jars:
        conf["spark.jars"] = jars
    if settings.spark.driver_java_options:
        conf["spark.driver.extraJavaOptions"] = settings.spark.driver_java_options
    if settings.spark.event_log:
        conf["spark.eventLog.enabled"] = "true"
        conf["spark.eventLog.dir"] = event_log_dir(settings).as_uri()
    return conf


def _defaults_file() -> Path:
    """``spark-defaults.conf`` where ``spark-submit`` looks for it."""
    if os.environ.get("SPARK_CONF_DIR"):
        return Path(os.environ["SPARK_CONF_DIR"]) / "spark-defaults.conf"
    if os.environ.get("SPARK_HOME"):
        return Path(os.environ["SPARK_HOME"]) / "conf" / "spark-defaults.conf"
    import pyspark

    return Path(pyspark.__file__).parent / "conf" / "spark-defaults.conf"


def read_spark_defaults(path: Path) -> dict[str, str]:
    """The ``spark.*`` properties of a ``spark-defaults.conf`` (``{}`` when it is absent)."""
    if not path.is_file():
        return {}
    found = {}
    for line in path.read_text().splitlines():
        match = _PROPERTY.match(line)
        if match and match.group(1).startswith("spark."):
            found[match.group(1)] = match.group(2)
    return found


def external_conf() -> dict[str, str]:
    """Spark properties set outside the profile.

    Under ``spark-submit`` the driver JVM already holds every property the submitter set
    (command line and ``spark-defaults.conf``), read back through ``SparkConf``; in-process,
    only ``spark-defaults.conf`` can say something before the JVM starts.
    """
    if os.environ.get("PYSPARK_GATEWAY_PORT"):  # set by spark-submit's PythonRunner
        from pyspark import SparkConf, SparkContext

        SparkContext._ensure_initialized()
        return dict(SparkConf().getAll())
    return read_spark_defaults(_defaults_file())


def shuffle_partitions_for(input_rows: int, settings: Settings) -> int:
    """Shuffle partitions for a job reading ``input_rows`` rows: one per
    ``spark.shuffle_input_rows_per_partition``, within [``shuffle_partitions``,
    ``shuffle_partitions_max``]."""
    cfg = settings.spark
    wanted = math.ceil(input_rows / cfg.shuffle_input_rows_per_partition)
    return max(cfg.shuffle_partitions, min(cfg.shuffle_partitions_max, wanted))


def parquet_rows(files: Iterable[Path | str]) -> int:
    """Rows of Parquet ``files``, from their footers (no data is read)."""
    import pyarrow.parquet as pq

    return sum(pq.read_metadata(f).num_rows for f in files)


def size_shuffle_partitions(spark, settings: Settings, inputs: Iterable[Path]) -> int:
    """Set the session's shuffle partitions from the rows of the Parquet partition folders a
    job reads (their footers: no data is read; :func:`shuffle_partitions_for`), unless
    spark-submit or spark-defaults.conf set them (the submitter's value wins, as in
    :func:`get_spark`).

    Returns:
        The shuffle partitions the job runs with.
    """
    external = external_conf().get(SHUFFLE_PARTITIONS)
    if external is not None:
        return int(external)
    rows = parquet_rows(f for p in inputs for f in Path(p).glob("*.parquet"))
    partitions = shuffle_partitions_for(rows, settings)
    spark.conf.set(SHUFFLE_PARTITIONS, str(partitions))
    log.info("%d shuffle partitions for %d input rows", partitions, rows)
    return partitions


def get_spark(app_name: str = "feedrank", settings: Settings | None = None):
    """A SparkSession: the submitter's properties first, the profile's where they are silent.

    Python workers run this interpreter (Spark would otherwise start ``python3`` from PATH,
    outside the venv).
    """
    from pyspark.sql import SparkSession

    settings = settings or get_settings()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    external = external_conf()
    builder = SparkSession.builder
    for key, value in profile_conf(app_name, settings).items():
        if key in external:
            log.info("%s from spark-submit/spark-defaults.conf: %s", key, external[key])
            continue
        builder = builder.config(key, value)
        if key == "spark.local.dir":
            Path(value).mkdir(parents=True, exist_ok=True)
        elif key == "spark.eventLog.dir":
            event_log_dir(settings).mkdir(parents=True, exist_ok=True)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark
