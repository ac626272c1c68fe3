"""Validation gates: per-partition checks of the lake and feature tables before anything trains.

Long because: the checks of one validation gate and its report.

Two gates, each over what exists when it runs (the retrain DAG runs them at two points):
the **lake** gate (:func:`validate_date` with ``kind="lake"``) checks the landed lake tables
of a date and their label rates, before any feature is built; the **feature** gate
(``kind="features"``) checks the feature tables of a date once ``feedrank features`` has
built them. Both compare with the previous date's partition of the same tables, with the same
thresholds and the same report format.

For each dataset partition of one date a gate checks the schema against the contract, row
counts, null rates, value ranges, new categories, label rates and drift against the previous
date's partition (PSI per numeric column, share shift per category), writes a JSON report
under ``<paths.reports>/validate/`` and fails with a one-line reason when a threshold from
``settings.monitoring`` breaks. A partition is small next to a day of the pipeline, so the
gate reads it with pyarrow/pandas on the driver (no Spark start-up on the critical path).

Drift of feature tables is reported but does not fail the gate: windows that are still
filling (the first 28 days of a world) move every feature, which is expected.
"""

from __future__ import annotations

import datetime as dt
import math
import typing
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import annotated_types as at
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads

from feedrank import lake, publish
from feedrank.config import HEADS, MonitoringConfig, Settings
from feedrank.errors import FeedrankError
from feedrank.exporter import record_outcome, record_time
from feedrank.feature_spec import VIEWS
from feedrank.schemas import LAKE_TABLES, table_schema

PSI_BINS = 10
PSI_MIN_ROWS = 200  # below this, PSI is mostly sampling noise
LABEL_MIN_EXPECTED = 20  # label collapse needs this many expected positives to be judged
CATEGORY_MAX_DISTINCT = 50
LAKE_DATASETS = tuple(LAKE_TABLES)
# The one-line error of a failed gate starts with this (dags/feedrank_tasks.py matches it).
GATE_FAILED = "validation failed for"
Kind = typing.Literal["lake", "features"]


@dataclass
class Finding:
    """One failed check."""

    dataset: str
    check: str
    column: str | None
    detail: str

    def line(self) -> str:
        where = f"{self.dataset}.{self.column}" if self.column else self.dataset
        return f"{self.check} in {where}: {self.detail}"


@dataclass
class DatasetReport:
    dataset: str
    rows: int
    previous_rows: int | None
    null_rates: dict[str, float] = field(default_factory=dict)
    psi: dict[str, float] = field(default_factory=dict)
    category_shift: dict[str, float] = field(default_factory=dict)
    label_rates: dict[str, float] = field(default_factory=dict)
    drift_enforced: bool = True
    findings: list[Finding] = field(default_factory=list)


def lake_ranges(table: str) -> dict[str, tuple[float | None, float | None]]:
    """Inclusive numeric bounds of a lake table's columns, from its pydantic constraints."""
    model = LAKE_TABLES[table]
    bounds: dict[str, tuple[float | None, float | None]] = {}
    for name, info in model.model_fields.items():
        metadata = list(info.metadata)
        annotation = info.annotation
        if typing.get_origin(annotation) is typing.Annotated:
            metadata += list(typing.get_args(annotation)[1:])
        lo = hi = None
        for meta in metadata:
            for item in getattr(meta, "metadata", [meta]):
                # Several constraints may stack (Int32 and the field's own): keep the tightest.
                if isinstance(item, at.Ge | at.Gt):
                    bound = getattr(item, "ge", getattr(item, "gt", None))
                    lo = bound if lo is None else max(lo, bound)
                if isinstance(item, at.Le | at.Lt):
                    bound = getattr(item, "le", getattr(item, "lt", None))
                    hi = bound if hi is None else min(hi, bound)
        if lo is not None or hi is not None:
            bounds[name] = (lo, hi)
    return bounds


def view_ranges(view_name: str) -> dict[str, tuple[float | None, float | None]]:
    """Feature bounds: counts, rates and encodings are non-negative; the peak hour is -1..23."""
    bounds: dict[str, tuple[float | None, float | None]] = {}
    for feat in VIEWS[view_name].features:
        if feat.name == "user_active_hour_peak":
            bounds[feat.name] = (-1, 23)
        elif feat.name.startswith("ctx_") or feat.name.endswith("_ts"):
            continue
        else:
            bounds[feat.name] = (0, None)
    return bounds


def required_columns(dataset: str, schema: pa.Schema) -> list[str]:
    """Columns that must not be null: non-nullable contract fields; counts and encodings.

    Required outside the tombstones of a view entities can leave (see :func:`live_rows`).
    """
    if dataset in VIEWS:
        view = VIEWS[dataset]
        return [f.name for f in view.features if f.dtype == "int64" or "_te_" in f.name]
    return [f.name for f in schema if not f.nullable]


def live_rows(dataset: str, frame: pd.DataFrame) -> pd.DataFrame:
    """The rows whose null rates are checked: for a view entities can leave
    (``View.leaves``), all but its tombstones (every feature null: the entity left the view,
    see :mod:`jobs.features`); for any other dataset, every row."""
    if dataset not in VIEWS or not VIEWS[dataset].leaves:
        return frame
    names = [n for n in VIEWS[dataset].feature_names if n in frame]  # a missing one: a finding
    return frame[~frame[names].isna().all(axis=1)] if names else frame


def psi(current: np.ndarray, previous: np.ndarray, bins: int = PSI_BINS) -> float:
    """Population stability index of ``current`` against ``previous`` (quantile bins)."""
    edges = np.unique(np.quantile(previous, np.linspace(0, 1, bins + 1)))
    if len(edges) < 2:
        edges = np.array([previous.min() - 0.5, previous.min() + 0.5])
    inner = edges[1:-1]
    prev_share = np.bincount(
        np.searchsorted(inner, previous, side="right"), minlength=len(inner) + 1
    ) / len(previous)
    cur_share = np.bincount(
        np.searchsorted(inner, current, side="right"), minlength=len(inner) + 1
    ) / len(current)
    eps = 1e-4
    prev_share, cur_share = np.clip(prev_share, eps, None), np.clip(cur_share, eps, None)
    return float(np.sum((cur_share - prev_share) * np.log(cur_share / prev_share)))


def _is_category(name: str, series: pd.Series) -> bool:
    return (
        (series.dtype == object or pd.api.types.is_bool_dtype(series))
        and not name.endswith("_id")
        and series.map(lambda v: isinstance(v, str | bool)).all()
    )


def _is_drift_numeric(name: str, series: pd.Series) -> bool:
    # Ids and timestamps move by construction every day; they are not distributions.
    return (
        pd.api.types.is_numeric_dtype(series)
        and not pd.api.types.is_bool_dtype(series)
        and not name.endswith("_id")
        and name not in ("schema_version",)
    )


def check_partition(
    dataset: str,
    current: pa.Table | None,
    previous: pa.Table | None,
    expected: pa.Schema,
    thresholds: MonitoringConfig,
    ranges: dict[str, tuple[float | None, float | None]],
    enforce_drift: bool = True,
) -> DatasetReport:
    """Every check of one partition against its contract and the previous partition."""
    if current is None:
        report = DatasetReport(dataset, 0, previous.num_rows if previous is not None else None)
        if previous is not None and previous.num_rows:
            report.findings.append(
                Finding(
                    dataset, "missing partition", None, "previous date had data, this date has none"
                )
            )
        return report
    report = DatasetReport(
        dataset,
        current.num_rows,
        previous.num_rows if previous is not None else None,
        drift_enforced=enforce_drift,
    )
    have = {f.name: f.type for f in current.schema}
    for f in expected:
        if f.name not in have:
            report.findings.append(Finding(dataset, "schema", f.name, "column missing"))
        elif have[f.name] != f.type:
            report.findings.append(
                Finding(dataset, "schema", f.name, f"type {have[f.name]} != contract {f.type}")
            )
    extra = sorted(set(have) - set(expected.names) - {lake.DATE_COLUMN})
    if extra:
        report.findings.append(Finding(dataset, "schema", extra[0], "column not in contract"))
    if current.num_rows == 0:
        if previous is not None and previous.num_rows:
            report.findings.append(Finding(dataset, "row count", None, "partition is empty"))
        return report
    cur = current.to_pandas()
    prev = previous.to_pandas() if previous is not None and previous.num_rows else None
    required = set(required_columns(dataset, expected))
    checked = live_rows(dataset, cur)
    checked_before = live_rows(dataset, prev) if prev is not None else None
    for name in cur.columns:
        rate = float(checked[name].isna().mean()) if len(checked) else 0.0
        report.null_rates[name] = rate
        before = (
            float(checked_before[name].isna().mean())
            if checked_before is not None and len(checked_before) and name in checked_before
            else 0.0
        )
        limit = thresholds.null_rate_max if name in required else before + thresholds.null_rate_max
        # A nullable column is judged against the day before; the first day of a table has
        # none, and null there can be the design (a rate with no denominator yet is unknown).
        baseline = name in required or (checked_before is not None and len(checked_before))
        if baseline and rate > limit:
            report.findings.append(
                Finding(dataset, "null rate", name, f"{rate:.1%} null (limit {limit:.1%})")
            )
    for name, (lo, hi) in ranges.items():
        if name not in cur:
            continue
        values = pd.to_numeric(cur[name], errors="coerce").dropna()
        bad = ((values < lo) if lo is not None else False) | (
            (values > hi) if hi is not None else False
        )
        if np.any(bad):
            report.findings.append(
                Finding(
                    dataset,
                    "out of range",
                    name,
                    f"{int(np.sum(bad))} value(s) outside [{lo}, {hi}], e.g. {values[bad].iloc[0]}",
                )
            )
    if prev is None:
        return report
    for name in cur.columns:
        if name not in prev:
            continue
        c, p = cur[name].dropna(), prev[name].dropna()
        if _is_category(name, c) and c.nunique() <= CATEGORY_MAX_DISTINCT:
            c_share, p_share = c.value_counts(normalize=True), p.value_counts(normalize=True)
            new = float(c_share[~c_share.index.isin(p_share.index)].sum())
            shift = float(0.5 * c_share.sub(p_share, fill_value=0).abs().sum())
            report.category_shift[name] = shift
            if new > thresholds.new_category_share_max:
                unseen = [str(v) for v in c_share.index if v not in p_share.index]
                report.findings.append(
                    Finding(
                        dataset,
                        "new category",
                        name,
                        f"{new:.1%} of rows have unseen value(s) {', '.join(unseen[:3])}",
                    )
                )
        elif _is_drift_numeric(name, c) and len(c) >= PSI_MIN_ROWS and len(p) >= PSI_MIN_ROWS:
            value = psi(c.to_numpy(np.float64), p.to_numpy(np.float64))
            report.psi[name] = value
            if enforce_drift and value > thresholds.psi_alert:
                report.findings.append(
                    Finding(dataset, "drift", name, f"PSI {value:.3f} > {thresholds.psi_alert}")
                )
    return report


def check_label_rates(
    impressions: pa.Table | None,
    engagements: pa.Table | None,
    prev_impressions: pa.Table | None,
    prev_engagements: pa.Table | None,
    thresholds: MonitoringConfig,
) -> DatasetReport:
    """Engagements per impression by head, against the previous date."""

    def rates(imps: pa.Table | None, engs: pa.Table | None) -> tuple[int, dict[str, float]]:
        n = imps.num_rows if imps is not None else 0
        heads = engs.column("head").to_pylist() if engs is not None else []
        return n, {h: (heads.count(h) / n if n else math.nan) for h in HEADS}

    n, cur = rates(impressions, engagements)
    n_prev, prev = rates(prev_impressions, prev_engagements)
    report = DatasetReport("labels", n, n_prev, label_rates=cur)
    for h in HEADS:
        if not n or not n_prev or math.isnan(prev[h]):
            continue
        floor = (1 - thresholds.label_rate_drop_max) * prev[h]
        if prev[h] * n >= LABEL_MIN_EXPECTED and cur[h] < floor:
            report.findings.append(
                Finding(
                    "labels",
                    "label rate",
                    h,
                    f"{cur[h]:.4f} < {floor:.4f} (previous {prev[h]:.4f})",
                )
            )
    return report


def _read(path: Path) -> pa.Table | None:
    if not path.is_dir():
        return None
    return pads.dataset(str(path), format="parquet").to_table()


def _lake_reports(
    settings: Settings, day: dt.date, prev_day: dt.date, wanted: set[str] | None
) -> list[DatasetReport]:
    reports = []
    tables = {}
    for table in LAKE_DATASETS:
        if wanted and table not in wanted:
            continue
        cur = _read(lake.partition_dir(settings.paths.lake, table, day))
        prev = _read(lake.partition_dir(settings.paths.lake, table, prev_day))
        tables[table] = (cur, prev)
        if cur is None and prev is None:
            continue
        reports.append(
            check_partition(
                table, cur, prev, table_schema(table), settings.monitoring, lake_ranges(table)
            )
        )
    # Label rates need both tables checked, and some partition of them (else nothing to rate).
    labelled = [tables[t] for t in ("impressions", "engagements") if t in tables]
    if len(labelled) == 2 and any(t is not None for pair in labelled for t in pair):
        (imp, prev_imp), (eng, prev_eng) = labelled
        reports.append(check_label_rates(imp, eng, prev_imp, prev_eng, settings.monitoring))
    return reports


def _feature_reports(
    settings: Settings, day: dt.date, prev_day: dt.date, wanted: set[str] | None
) -> list[DatasetReport]:
    reports = []
    for view in VIEWS:
        if wanted and view not in wanted:
            continue
        cur = _read(lake.partition_dir(settings.paths.features, view, day))
        prev = _read(lake.partition_dir(settings.paths.features, view, prev_day))
        if cur is None and prev is None:
            continue
        reports.append(
            check_partition(
                view,
                cur,
                prev,
                lake.feature_table_schema(view),
                settings.monitoring,
                view_ranges(view),
                enforce_drift=False,
            )
        )
    return reports


def report_path(settings: Settings, day: dt.date, kind: Kind = "lake") -> Path:
    """``<reports>/validate/<date>.json`` (lake) or ``<reports>/validate/features/<date>.json``.

    Two files, because the two gates run at different points of the retrain DAG: the feature
    report of a day must not overwrite (or be mistaken for) its lake report.
    """
    folder = settings.paths.reports / "validate"
    return (folder / "features" if kind == "features" else folder) / f"{day.isoformat()}.json"


def validate_date(
    settings: Settings,
    day: dt.date,
    datasets: Iterable[str] | None = None,
    kind: Kind = "lake",
) -> tuple[list[DatasetReport], Path]:
    """Run one gate for ``day`` against the previous date; write its JSON report.

    Args:
        settings: paths and thresholds (``settings.monitoring``).
        day: the partition date checked.
        datasets: only these tables or views (default: every one of the kind).
        kind: ``"lake"`` checks the landed lake tables and label rates; ``"features"`` the
            feature tables (:data:`feedrank.feature_spec.VIEWS`). Each checks only what its
            own inputs are: the lake gate runs before the feature tables of ``day`` exist.

    Returns:
        (one report per dataset checked, the report path).

    Raises:
        FileNotFoundError: neither ``day`` nor the date before has a partition of the kind.
    """
    prev_day = day - dt.timedelta(days=1)
    wanted = set(datasets) if datasets else None
    build = _feature_reports if kind == "features" else _lake_reports
    reports = build(settings, day, prev_day, wanted)
    if not reports:
        root = settings.paths.features if kind == "features" else settings.paths.lake
        raise FileNotFoundError(f"no {kind} partitions for {day} or the day before under {root}")
    path = report_path(settings, day, kind)
    findings = [f for r in reports for f in r.findings]
    publish.write_json(
        path,
        {
            "date": day.isoformat(),
            "kind": kind,
            "ok": not findings,
            "findings": [f.line() for f in findings],
            "datasets": [asdict(r) for r in reports],
        },
    )
    return reports, path


def gate(
    settings: Settings,
    day: dt.date,
    datasets: Iterable[str] | None = None,
    kind: Kind = "lake",
) -> Path:
    """:func:`validate_date`, raising a one-line :class:`FeedrankError` on the first finding.

    The message starts with :data:`GATE_FAILED` (the retrain DAG recognises a deterministic
    gate failure by it and fails the task without retries).
    """
    reports, path = validate_date(settings, day, datasets, kind)
    findings = [f for r in reports for f in r.findings]
    record_outcome(
        settings,
        "feedrank_batch_validation_failures",
        "Findings of the last validation gate run, by kind (lake or features).",
        len(findings),
        {"kind": kind},
    )
    record_time(
        settings,
        "feedrank_batch_validation_last_run_timestamp_seconds",
        "When the validation gate last ran, by kind.",
        kind=kind,
    )
    if findings:
        more = f" (+{len(findings) - 1} more)" if len(findings) > 1 else ""
        what = " (feature tables)" if kind == "features" else ""
        raise FeedrankError(f"{GATE_FAILED} {day}{what}: {findings[0].line()}{more}; report {path}")
    return path
