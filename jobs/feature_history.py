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
``<features>/_history/cut=<cut>/<site>/`` (:meth:`HistoryFold.save`); a later run whose cut
is at or after a saved one reads that summary instead of the lake up to it, so it reads the
lake's partitions after the summary's cut only (partition pruning) and its cost no longer
grows with the lake's length (docs/performance.md, #27).

A summary is reused only while it still describes the lake and the code: its ``_meta.json``
holds a digest of the lake partitions it folded (file names, sizes, modification times) and
of the feature code; any difference and the run reads the whole lake again, as before.
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
from feedrank.publish import write_dir_atomic, write_json
from jobs import spark_io

log = logging.getLogger("feedrank.features")

HISTORY_DIR = "_history"
META = "_meta.json"
KEEP_SUMMARIES = 2  # the newest summaries kept: today's and yesterday's (a rerun's)
# The code whose definitions a summary's rows depend on: a summary written by other code is
# not reused.
_CODE_FILES = ("jobs/features.py", "jobs/feature_history.py", "feedrank/feature_spec.py")


def history_root(features_root: Path) -> Path:
    """Where the summaries of a feature root live."""
    return Path(features_root) / HISTORY_DIR


def code_digest() -> str:
    """SHA-256 of the feature code a summary's rows depend on."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for name in _CODE_FILES:
        digest.update(name.encode())
        digest.update((root / name).read_bytes())
    return digest.hexdigest()


def lake_digest(lake_root: Path, tables: Iterable[str], through: dt.date) -> str:
    """SHA-256 of the lake partitions of ``tables`` up to ``through``: every file's path,
    size and modification time (a rewritten partition changes it)."""
    digest = hashlib.sha256()
    for table in sorted(tables):
        for part in lake.existing_partitions(lake_root, table, None, through):
            for path in sorted(part.rglob("*")):
                if path.is_file():
                    stat = path.stat()
                    rel = path.relative_to(lake_root)
                    digest.update(f"{rel}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
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


def _saved_cuts(root: Path) -> list[dt.date]:
    cuts = []
    for path in history_root(root).glob("cut=*"):
        try:
            cuts.append(dt.date.fromisoformat(path.name.split("=", 1)[1]))
        except ValueError:
            continue
    return sorted(cuts)


def plan_history(
    lake_root: Path, features_root: Path, tables: Iterable[str], start: dt.date, lookback_days: int
) -> HistoryPlan:
    """The cut of a run whose first snapshot is ``start`` and the newest saved summary it can
    start from: at or before the cut, written by this code over the lake as it is now."""
    tables = sorted(tables)
    cut = start - dt.timedelta(days=lookback_days + 1)
    code = code_digest()
    carried = None
    for saved in reversed(_saved_cuts(features_root)):
        if saved > cut:
            continue
        meta_path = history_root(features_root) / f"cut={saved.isoformat()}" / META
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
    features_root: Path
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
                str(self._site_dir(carried, site))
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

    def _site_dir(self, cut: dt.date, site: str) -> Path:
        return history_root(self.features_root) / f"cut={cut.isoformat()}" / site

    def save(self) -> Path | None:
        """Write every folded site as the summary at the cut (atomically, one folder), drop
        summaries older than the :data:`KEEP_SUMMARIES` newest; None when there was nothing
        new to save (the carried summary is already at the cut)."""
        cut = self.plan.cut
        if self.plan.carried == cut or not self.folded:
            return None
        target = history_root(self.features_root) / f"cut={cut.isoformat()}"

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
        for old in _saved_cuts(self.features_root)[:-KEEP_SUMMARIES]:
            shutil.rmtree(history_root(self.features_root) / f"cut={old.isoformat()}")
        log.info("history summary at %s saved (%s)", cut, ", ".join(sorted(self.folded)))
        return target
