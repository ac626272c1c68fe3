"""Landing: Kafka topics -> lake partitions, exactly once per record, via Structured Streaming.

``spark.readStream.format("kafka")`` (the spark-sql-kafka connector from ``.cache/spark-jars``)
with a checkpoint in the run folder and ``trigger(availableNow=True)``: each run lands
everything published since the previous run and stops. Every micro-batch is validated with
:func:`feedrank.schemas.decode` inside ``mapInPandas``; good records are re-serialized by
their pydantic model and parsed with the table's Spark schema, bad ones go to
``<lake>/_quarantine/<topic>/date=<landing day>/`` with the reason.

No duplicates, no gaps: Structured Streaming replays a failed micro-batch with the same id
and the same offset range, and each batch writes files named after its id
(``part-b<batch>-<n>.parquet``) after deleting any file of that id, so a replay overwrites
instead of appending. Offsets are committed to the checkpoint only after the batch's files
are in place. After a run, each landed table's landed-through mark
(:func:`feedrank.lake.mark_landed_through`) advances to the run's start in event time
(``clock.offset_s``) less ``clock.max_event_lag_s``: what the retrain DAG's sensor waits for.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from feedrank import lake, publish
from feedrank.config import Settings
from feedrank.errors import FeedrankError
from feedrank.exporter import record_outcome, record_time
from feedrank.schemas import EVENT_TIME, DeadLetter, decode, table_schema
from jobs import spark_io

log = logging.getLogger("feedrank.land")

# Topics with a lake table of the same name (ranked_feeds is serving output, not lake input).
LAKE_TOPICS: tuple[str, ...] = ("tweets", "follows", "feed_requests", "impressions", "engagements")
QUARANTINE = "_quarantine"
_DECODED = T.StructType(
    [
        T.StructField("topic", T.StringType()),
        T.StructField("partition", T.IntegerType()),
        T.StructField("offset", T.LongType()),
        T.StructField("ok", T.BooleanType()),
        T.StructField("json", T.StringType()),
        T.StructField("reason", T.StringType()),
        T.StructField("payload", T.StringType()),
    ]
)


def decode_batch(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """``mapInPandas`` body: validate each Kafka value with the contract's ``decode``.

    One output row per lake row of a good record, one per bad record (with its reason and a
    bounded prefix of its payload). ``decode`` returns for any bytes, so no record can stop
    the query (and then every rerun, at the same offset).
    """
    for batch in batches:
        out = {name: [] for name in _DECODED.names}
        for topic, partition, offset, value in zip(
            batch["topic"], batch["partition"], batch["offset"], batch["value"], strict=True
        ):
            payload = bytes(value) if value is not None else None
            result = decode(topic, payload, partition=int(partition), offset=int(offset))
            if isinstance(result, DeadLetter):
                rows = [(False, None, result.reason, result.payload)]
            else:
                rows = [(True, row.model_dump_json(), None, None) for row in result.lake_rows()]
            for ok, good_json, reason, bad_payload in rows:
                out["topic"].append(topic)
                out["partition"].append(int(partition))
                out["offset"].append(int(offset))
                out["ok"].append(ok)
                out["json"].append(good_json)
                out["reason"].append(reason)
                out["payload"].append(bad_payload)
        yield pd.DataFrame(out)


def decode_records(records: DataFrame) -> DataFrame:
    """Kafka rows (topic, partition, offset, value) -> decoded rows (see :data:`_DECODED`)."""
    return records.select("topic", "partition", "offset", "value").mapInPandas(
        decode_batch, _DECODED
    )


def table_rows(decoded: DataFrame, topic: str) -> DataFrame:
    """Good records of ``topic`` as the lake table's columns plus the ``date`` partition."""
    schema = spark_io.spark_schema(table_schema(topic))
    parsed = decoded.where((F.col("topic") == topic) & F.col("ok")).select(
        F.from_json("json", schema).alias("r")
    )
    return parsed.select("r.*").withColumn(lake.DATE_COLUMN, F.to_date(F.col(EVENT_TIME[topic])))


def quarantine_rows(decoded: DataFrame, landed_on: dt.date) -> DataFrame:
    """Bad records with their reason and where they came from."""
    return decoded.where(~F.col("ok")).select(
        "topic",
        "partition",
        "offset",
        "reason",
        "payload",
        F.lit(landed_on).alias(lake.DATE_COLUMN),
    )


def _publish(tmp: Path, root: Path, batch_id: int) -> int:
    """Move a batch's files into ``root``'s partitions as ``part-b<batch>-<n>.parquet``."""
    prefix = f"part-b{batch_id:08d}-"
    for stale in root.glob(f"*/{prefix}*.parquet"):
        stale.unlink()  # a replayed batch replaces its own earlier files
    moved = 0
    for part_dir in sorted(tmp.glob(f"{lake.DATE_COLUMN}=*")):
        target = root / part_dir.name
        target.mkdir(parents=True, exist_ok=True)
        for n, file in enumerate(sorted(part_dir.glob("part-*.parquet"))):
            file.rename(target / f"{prefix}{n:05d}.parquet")
            moved += 1
    return moved


def write_batch(
    decoded: DataFrame, batch_id: int, settings: Settings, topics: Iterable[str], landed_on: dt.date
) -> dict[str, int]:
    """Write one micro-batch: each topic's table partitions and the quarantine; returns the
    number of Parquet files published per table (records: :func:`_batch_rows`)."""
    decoded = decoded.cache()
    counts = {}
    try:
        outputs = {t: (table_rows(decoded, t), settings.paths.lake / t) for t in topics}
        for topic in topics:
            outputs[f"{QUARANTINE}/{topic}"] = (
                quarantine_rows(decoded.where(F.col("topic") == topic), landed_on),
                settings.paths.lake / QUARANTINE / topic,
            )
        for name, (frame, root) in outputs.items():
            tmp = publish.temp_sibling(root)
            try:
                spark_io.write_spark_parquet(frame, tmp, partition_by=lake.DATE_COLUMN)
                counts[name] = _publish(tmp, root, batch_id)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    finally:
        decoded.unpersist()
    return counts


def land(
    spark: SparkSession,
    settings: Settings,
    topics: Iterable[str] | None = None,
    checkpoint: Path | None = None,
    *,
    batch_records: int = 200_000,
    starting_offsets: dict[str, dict[int, int]] | None = None,
) -> dict[str, dict[str, int]]:
    """Land everything new on ``topics`` and stop (``availableNow``).

    Args:
        spark: The session.
        settings: Kafka address and run folder.
        topics: Lake topics to land (default: all of :data:`LAKE_TOPICS`).
        checkpoint: The streaming checkpoint (default ``<home>/checkpoints/land``).
        batch_records: Most Kafka records per micro-batch (``maxOffsetsPerTrigger``).
        starting_offsets: Per topic and partition, where a new checkpoint starts (default:
            the earliest offsets); a checkpoint that exists resumes where it stopped.

    Returns:
        Per topic: rows now in the lake table and records in its quarantine.
    """
    topics = list(topics or LAKE_TOPICS)
    unknown = [t for t in topics if t not in LAKE_TOPICS]
    if unknown:
        raise FeedrankError(
            f"cannot land topic {unknown[0]!r} (lake topics: {', '.join(LAKE_TOPICS)})"
        )
    checkpoint = checkpoint or settings.paths.home / "checkpoints" / "land"
    started = dt.datetime.now(dt.UTC)
    landed_on = started.date()
    # Every record in the topics when the run starts is read (availableNow), so each table
    # holds every event stamped before the start, less the lag an event time may have.
    through = started + dt.timedelta(
        seconds=settings.clock.offset_s - settings.clock.max_event_lag_s
    )
    source = (
        spark.readStream.format("kafka")
        .options(**settings.kafka.spark_options("land"))
        .option("subscribe", ",".join(topics))
        .option(
            "startingOffsets",
            json.dumps(
                {t: {str(p): o for p, o in parts.items()} for t, parts in starting_offsets.items()}
            )
            if starting_offsets
            else "earliest",
        )
        .option("maxOffsetsPerTrigger", batch_records)
        .load()
    )
    totals = {t: {"rows": 0, "quarantined": 0} for t in topics}

    def each_batch(batch: DataFrame, batch_id: int) -> None:
        files = write_batch(decode_records(batch), batch_id, settings, topics, landed_on)
        records = {name: _batch_rows(settings.paths.lake / name, batch_id) for name in files}
        log.info("landing batch %d: records %s (files %s)", batch_id, records, files)
        for name, rows in records.items():
            quarantined = name.startswith(f"{QUARANTINE}/")
            record_outcome(
                settings,
                "feedrank_landing_quarantined_records_total"
                if quarantined
                else "feedrank_landing_records_total",
                "Records quarantined by landing, by topic."
                if quarantined
                else "Records landed into the lake, by topic.",
                rows,
                {"topic": name.removeprefix(f"{QUARANTINE}/")},
                kind="counter",
            )

    run_id = uuid.uuid4().hex[:8]
    query = (
        source.writeStream.foreachBatch(each_batch)
        .option("checkpointLocation", str(checkpoint))
        .queryName(f"feedrank_land_{run_id}")
        .trigger(availableNow=True)
        .start()
    )
    query.awaitTermination()
    if query.exception() is not None:
        raise FeedrankError(f"landing failed: {query.exception()}")
    for progress in query.recentProgress:
        log.info(
            "landing progress: %s rows in batch %s",
            progress.get("numInputRows"),
            progress.get("batchId"),
        )
    for topic in topics:
        lake.mark_landed_through(settings.paths.lake, topic, through, by="landing")
        totals[topic]["rows"] = _count(settings.paths.lake / topic)
        totals[topic]["quarantined"] = _count(settings.paths.lake / QUARANTINE / topic)
    record_time(
        settings,
        "feedrank_landing_last_run_timestamp_seconds",
        "When a landing run last finished.",
    )
    return totals


def _batch_rows(root: Path, batch_id: int) -> int:
    """Rows of the files micro-batch ``batch_id`` published under ``root`` (Parquet footers)."""
    import pyarrow.parquet as pq

    files = root.glob(f"*/part-b{batch_id:08d}-*.parquet")
    return sum(pq.read_metadata(path).num_rows for path in files)


def _count(root: Path) -> int:
    import pyarrow.dataset as pads

    if not root.is_dir() or not any(root.glob("*/*.parquet")):
        return 0
    return pads.dataset(str(root), format="parquet", partitioning="hive").count_rows()
