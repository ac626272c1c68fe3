"""The SparkSession factory: microsecond timestamps round-trip Parquet; Kafka connector jars."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic

from feedrank import services
from feedrank.config import Settings

UTC = dt.UTC


@pytest.mark.integration
def test_parquet_timestamps_round_trip_to_the_microsecond(spark, tmp_path: Path) -> None:
    rows = [
        (1, dt.datetime(2026, 11, 1, 0, 0, 0, 1, tzinfo=UTC)),
        (2, dt.datetime(2026, 11, 1, 23, 59, 59, 999_999, tzinfo=UTC)),
        (3, dt.datetime(1999, 12, 31, 12, 30, 15, 123_456, tzinfo=UTC)),
    ]
    path = tmp_path / "events"
    spark.createDataFrame(rows, "id long, ts timestamp").write.parquet(str(path))

    back = sorted(spark.read.parquet(str(path)).collect())
    assert [(r.id, r.ts.replace(tzinfo=UTC) if r.ts.tzinfo is None else r.ts) for r in back] == [
        (i, ts) for i, ts in rows
    ]
    # Written as microseconds (Spark rejects nanosecond Parquet), readable by pyarrow too.
    schema = pq.read_schema(next(path.glob("*.parquet")))
    assert schema.field("ts").type.unit == "us"
    assert spark.conf.get("spark.sql.session.timeZone") == "UTC"


@pytest.mark.integration
def test_spark_reads_a_kafka_topic_through_the_connector(spark, kafka: Settings) -> None:
    topic = f"foundation-spark-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=kafka.kafka.bootstrap_servers)
    services.create_topics(admin, [NewTopic(topic, num_partitions=2, replication_factor=1)])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=kafka.kafka.bootstrap_servers, acks="all")
    expected = {(f"k{i}", f"v{i}") for i in range(50)}
    for key, value in expected:
        producer.send(topic, key=key.encode(), value=value.encode())
    producer.flush()
    producer.close()

    frame = (
        spark.read.format("kafka")
        .option("kafka.bootstrap.servers", kafka.kafka.bootstrap_servers)
        .option("subscribe", topic)
        .option("startingOffsets", "earliest")
        .option("endingOffsets", "latest")
        .load()
        .selectExpr("CAST(key AS STRING) AS k", "CAST(value AS STRING) AS v", "partition")
    )
    rows = frame.collect()
    assert {(r.k, r.v) for r in rows} == expected
    assert {r.partition for r in rows} == {0, 1}


@pytest.mark.integration
def test_a_job_off_a_terminal_writes_no_progress_bar(tmp_path: Path) -> None:
    """A Spark job whose stderr is a log (a DAG task, ``make demo > log``) writes lines only.

    The stage sleeps past the progress bar's first delay (0.5 s), so a bar would be drawn.
    """
    import os
    import subprocess
    import sys

    code = (
        "import time\n"
        "from feedrank.spark import get_spark\n"
        "spark = get_spark('progress-test')\n"
        "spark.sparkContext.parallelize(range(2), 2).map(lambda x: time.sleep(2) or x).count()\n"
        "spark.stop()\n"
    )
    env = {**os.environ, "FEEDRANK_PATHS__HOME": str(tmp_path)}
    # Bytes: text mode would turn the bar's carriage returns into newlines.
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:].decode(errors="replace")
    assert b"\r" not in done.stderr
    assert b"[Stage" not in done.stderr


@pytest.mark.integration
def test_driver_java_options_reach_the_session_jvm(tmp_path: Path) -> None:
    """``spark.driver_java_options`` is on the session JVM's command line,
    and an empty setting adds nothing."""
    import os
    import subprocess
    import sys

    code = (
        "from feedrank.spark import get_spark\n"
        "spark = get_spark('jvm-options-test')\n"
        "bean = spark.sparkContext._jvm.java.lang.management.ManagementFactory\n"
        "print('|'.join(bean.getRuntimeMXBean().getInputArguments()))\n"
        "print(spark.conf.get('spark.driver.extraJavaOptions', 'unset'))\n"
        "print(spark.sparkContext.getConf().get('spark.shuffle.compress'))\n"
        "spark.stop()\n"
    )
    env = {
        **os.environ,
        "FEEDRANK_PATHS__HOME": str(tmp_path),
        "FEEDRANK_SPARK__DRIVER_JAVA_OPTIONS": "-XX:TieredStopAtLevel=1 -Dfeedrank.test=on",
    }
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-2000:]
    jvm_args, conf_value, shuffle_compress = done.stdout.strip().splitlines()[-3:]
    assert {"-XX:TieredStopAtLevel=1", "-Dfeedrank.test=on"} <= set(jvm_args.split("|"))
    assert conf_value == "-XX:TieredStopAtLevel=1 -Dfeedrank.test=on"
    assert shuffle_compress == "false"  # the local profile's session


@pytest.mark.unit
@pytest.mark.parametrize(("profile", "compress"), [("local", "false"), ("cluster", "true")])
def test_shuffles_are_compressed_only_where_they_cross_a_network(
    monkeypatch: pytest.MonkeyPatch, profile: str, compress: str
) -> None:
    """One machine: shuffle files stay local, lz4 would only cost CPU; the cluster profile's
    executors exchange them over the network. Both profiles run the throughput collector."""
    from feedrank.spark import profile_conf

    monkeypatch.delenv("FEEDRANK_SPARK__SHUFFLE_COMPRESS", raising=False)
    monkeypatch.delenv("FEEDRANK_SPARK__DRIVER_JAVA_OPTIONS", raising=False)
    monkeypatch.setenv("FEEDRANK_PROFILE", profile)
    conf = profile_conf("t", Settings())
    assert conf["spark.shuffle.compress"] == conf["spark.shuffle.spill.compress"] == compress
    assert conf["spark.driver.extraJavaOptions"] == "-XX:+UseParallelGC"


@pytest.mark.unit
def test_an_empty_driver_java_options_sets_no_property() -> None:
    from feedrank.spark import profile_conf

    def with_options(options: str) -> Settings:
        settings = Settings()
        spark = settings.spark.model_copy(update={"driver_java_options": options})
        return settings.model_copy(update={"spark": spark})

    assert "spark.driver.extraJavaOptions" not in profile_conf("t", with_options(""))
    assert profile_conf("t", with_options("-Xss4m"))["spark.driver.extraJavaOptions"] == "-Xss4m"


@pytest.mark.integration
def test_shuffle_partitions_follow_the_input_rows_within_their_bounds(
    spark, tmp_path: Path
) -> None:
    from feedrank.spark import SHUFFLE_PARTITIONS, size_shuffle_partitions

    settings = Settings(
        spark={
            "shuffle_partitions": 4,
            "shuffle_input_rows_per_partition": 100,
            "shuffle_partitions_max": 8,
        }
    )
    folder = tmp_path / "date=2026-11-01"
    folder.mkdir()
    before = spark.conf.get(SHUFFLE_PARTITIONS)
    try:
        for rows, expected in ((50, 4), (650, 7), (5_000, 8)):
            table = pa.table({"id": list(range(rows))})
            pq.write_table(table, folder / "part-0.parquet")
            assert size_shuffle_partitions(spark, settings, [folder]) == expected
            assert spark.conf.get(SHUFFLE_PARTITIONS) == str(expected)
    finally:
        spark.conf.set(SHUFFLE_PARTITIONS, before)
