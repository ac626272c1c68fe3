"""History summaries: the lake before a feature run's lookback, folded into one row per key.

The daily views mix windowed sums (at most :data:`jobs.features.LOOKBACK_DAYS` days, seen
from the snapshot and from the day before it) with all-history ones (target encodings,
follow counts, a tweet's totals, the last engagement). A snapshot of day ``D >= start``
therefore needs the lake's days after ``cut = start - LOOKBACK_DAYS - 1`` day by day, but of
the days up to ``cut`` only their per-key totals: no window of any snapshot reaches ``cut``.

:class:`HistoryFold` does that fold inside :func:`jobs.features._windowed`: the key-day rows
of days up to ``cut`` become one row per key dated ``cut`` (sums added, maxima kept), which
gives the same snapshots as the unfolded rows, since sums and maxima are associative and
every windowed sum excludes ``cut``. The folded rows of every call site are then saved under
``<paths.feature_history>/cut=<cut>/<site>/`` (:meth:`HistoryFold.save`); a later run whose cut
is at or after a saved one reads that summary instead of the lake up to it, so it reads the
lake's partitions after the summary's cut only (partition pruning) and its cost no longer
grows with the lake's length (docs/performance.md, #27).

A summary is reused only while it still describes the lake and the code: its ``_meta.json``
holds a digest of the lake partitions it folded (file names, sizes, modification times) and
of the feature code; any difference and the run reads the whole lake again, as before.

Snapshots are kept the same way (:class:`SnapshotRecord`): a view's partition of day ``D`` is
a function of the lake's partitions up to ``D`` and of the code only, so a run records, per
view and day, the digest of those inputs and of the partition it wrote
(``<paths.feature_history>/snapshots.json``). A later run over a window that overlaps it
(the retrain DAG's window moves by one day) keeps the partitions whose record still matches
and computes from the first day that does not: one snapshot instead of ``training_days`` on
a daily run.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from feedrank import lake
from feedrank.publish import write_dir_atomic, write_json, write_json_atomic
from jobs import spark_io

log = logging.getLogger("feedrank.features")

META = "_meta.json"
SNAPSHOTS = "snapshots.json"
KEEP_SUMMARIES = 2  # the newest summaries kept: today's and yesterday's (a rerun's)
# The code whose definitions a summary's rows depend on: a summary written by other code is
# not reused.
_CODE_FILES = ("jobs/features.py", "jobs/feature_history.py", "feedrank/feature_spec.py")


def code_digest() -> str:
    """SHA-256 of the feature code a summary's rows depend on."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for name in _CODE_FILES:
        digest.update(name.encode())
        digest.update((root / name).read_bytes())
    return digest.hexdigest()


def _update_with_files(digest: hashlib._Hash, folder: Path, root: Path) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            stat = path.stat()
            digest.update(
                f"{path.relative_to(root)}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode()
            )


def lake_digests(
    lake_root: Path, tables: Iterable[str], days: Iterable[dt.date]
) -> dict[dt.date, str]:
    """Per day of ``days``: the SHA-256 of the lake partitions of ``tables`` up to that day,
    of every file's path, size and modification time (a rewritten partition changes it).

    One walk over the partitions, in date order, whatever the number of days.
    """
    wanted = sorted(set(days))
    if not wanted:
        return {}
    parts = sorted(
        (day, table, path)
        for table in tables
        for day, path in lake.dated_folders(Path(lake_root) / table)
        if day <= wanted[-1]
    )
    digest = hashlib.sha256()
    digests: dict[dt.date, str] = {}
    pending = iter(parts)
    part = next(pending, None)
    for day in wanted:
        while part is not None and part[0] <= day:
            _update_with_files(digest, part[2], lake_root)
            part = next(pending, None)
        digests[day] = digest.copy().hexdigest()
    return digests


def lake_digest(lake_root: Path, tables: Iterable[str], through: dt.date) -> str:
    """:func:`lake_digests` of the one day ``through``."""
    return lake_digests(lake_root, tables, [through])[through]


def folder_digest(folder: Path) -> str:
    """SHA-256 of the files under ``folder`` (path, size, modification time); a missing
    folder (a day without rows) has its own digest."""
    digest = hashlib.sha256()
    if folder.is_dir():
        _update_with_files(digest, folder, folder)
    else:
        digest.update(b"missing")
    return digest.hexdigest()


@dataclass(frozen=True)
class HistoryPlan:
    """What a feature run for ``[start, end]`` reads.

    ``cut``: the last day folded into per-key totals. ``carried``: the cut of the saved
    summary the run starts from (None: the lake from its first day), so the lake is read
    from the day after ``carried``.
    """

    cut: dt.date
    carried: dt.date | None
    lake_digest_at_cut: str

    @property
    def read_from(self) -> dt.date | None:
        """The first lake day the run reads (None: the first there is)."""
        return None if self.carried is None else self.carried + dt.timedelta(days=1)


def summary_dir(history_dir: Path, cut: dt.date) -> Path:
    """The summary folder of ``cut``."""
    return Path(history_dir) / f"cut={cut.isoformat()}"


def _saved_cuts(history_dir: Path) -> list[dt.date]:
    return [day for day, _ in lake.dated_folders(history_dir, "cut")]


def plan_history(
    lake_root: Path, history_dir: Path, tables: Iterable[str], start: dt.date, lookback_days: int
) -> HistoryPlan:
    """The cut of a run whose first snapshot is ``start`` and the newest saved summary it can
    start from: at or before the cut, written by this code over the lake as it is now."""
    tables = sorted(tables)
    cut = start - dt.timedelta(days=lookback_days + 1)
    code = code_digest()
    carried = None
    for saved in reversed(_saved_cuts(history_dir)):
        if saved > cut:
            continue
        meta_path = summary_dir(history_dir, saved) / META
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            continue
        if meta.get("code") == code and meta.get("lake") == lake_digest(lake_root, tables, saved):
            carried = saved
            break
        log.info("history summary at %s no longer matches the lake or the code: not used", saved)
    return HistoryPlan(cut, carried, lake_digest(lake_root, tables, cut))


@dataclass
class HistoryFold:
    """Folds the key-day rows up to ``plan.cut`` of every :func:`jobs.features._windowed`
    call into one row per key (see the module docstring); remembers them for :meth:`save`."""

    spark: SparkSession
    history_dir: Path
    plan: HistoryPlan
    folded: dict[str, DataFrame] = field(default_factory=dict)

    def fold(
        self, site: str, per_day: DataFrame, keys: list[str], sums: list[str], maxes: list[str]
    ) -> DataFrame:
        """``per_day`` (one row per key and ``day``) with its days up to the cut replaced by
        one row per key dated the cut, the carried summary's totals added."""
        cut, carried = self.plan.cut, self.plan.carried
        day = F.col("day")
        old = per_day.where(day <= F.lit(cut))
        if carried is not None:
            # The schema is given: a site with no rows was saved without a data file.
            saved = self.spark.read.schema(per_day.schema).parquet(
                str(summary_dir(self.history_dir, carried) / site)
            )
            old = old.where(day > F.lit(carried)).unionByName(saved)
        folded = (
            old.groupBy(*keys)
            .agg(
                *[F.sum(c).alias(c) for c in sums],
                *[F.max(c).alias(c) for c in maxes],
                F.count(F.lit(1)).alias("_n"),
            )
            .where(F.col("_n") > 0)  # a global (keyless) fold of no rows is no row
            .select(*keys, F.lit(cut).alias("day"), *sums, *maxes)
        )
        self.folded[site] = folded
        return per_day.where(day > F.lit(cut)).unionByName(folded.select(*per_day.columns))

    def save(self) -> Path | None:
        """Write every folded site as the summary at the cut (atomically, one folder), drop
        summaries older than the :data:`KEEP_SUMMARIES` newest; None when there was nothing
        new to save (the carried summary is already at the cut)."""
        cut = self.plan.cut
        if self.plan.carried == cut or not self.folded:
            return None
        target = summary_dir(self.history_dir, cut)

        def build(tmp: Path) -> None:
            for site, frame in sorted(self.folded.items()):
                spark_io.write_spark_parquet(frame, tmp / site)
            write_json(
                tmp / META,
                {
                    "cut": cut.isoformat(),
                    "lake": self.plan.lake_digest_at_cut,
                    "code": code_digest(),
                },
            )

        write_dir_atomic(target, build)
        for old in _saved_cuts(self.history_dir)[:-KEEP_SUMMARIES]:
            shutil.rmtree(summary_dir(self.history_dir, old))
        log.info("history summary at %s saved (%s)", cut, ", ".join(sorted(self.folded)))
        return target


@dataclass
class SnapshotRecord:
    """Per view and day: the digest of the inputs a feature partition was computed from (the
    lake up to that day and the code) and of the partition itself."""

    features_root: Path
    path: Path
    entries: dict[str, dict[str, dict[str, str]]]

    @classmethod
    def load(cls, features_root: Path, history_dir: Path) -> SnapshotRecord:
        """The record of ``features_root``'s partitions kept in ``history_dir`` (empty when
        there is none or it is unreadable)."""
        path = Path(history_dir) / SNAPSHOTS
        try:
            entries = json.loads(path.read_text())
        except (OSError, ValueError):
            entries = {}
        return cls(Path(features_root), path, entries if isinstance(entries, dict) else {})

    @staticmethod
    def inputs(
        lake_root: Path, tables: Iterable[str], days: Iterable[dt.date], code: str
    ) -> dict[dt.date, str]:
        """Per day of ``days``: the digest of what a partition of that day is computed from."""
        return {
            day: hashlib.sha256(f"{code}\n{digest}".encode()).hexdigest()
            for day, digest in lake_digests(lake_root, tables, days).items()
        }

    def _partition(self, view: str, day: dt.date) -> Path:
        return lake.partition_dir(self.features_root, view, day)

    def fresh(self, view: str, day: dt.date, inputs: str) -> bool:
        """Whether ``view``'s partition of ``day`` was written from ``inputs`` and is untouched."""
        entry = self.entries.get(view, {}).get(day.isoformat())
        return bool(
            entry
            and entry.get("inputs") == inputs
            and entry.get("files") == folder_digest(self._partition(view, day))
        )

    def record(self, view: str, day: dt.date, inputs: str) -> None:
        """Note that ``view``'s partition of ``day`` (as it is now) was computed from ``inputs``."""
        self.entries.setdefault(view, {})[day.isoformat()] = {
            "inputs": inputs,
            "files": folder_digest(self._partition(view, day)),
        }

    def save(self) -> None:
        """Write the record atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.path, self.entries)
