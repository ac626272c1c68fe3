"""Offline/online parity (issue 5): the training data equals what serving reads online.

The training rows are the ones the real Spark training-data job wrote for the session's
pipeline world (``pipeline_run``: no extra Spark work). The online side is what the scorer's
reference path reads — :func:`serving.hydration.online_features_matrix`, i.e.
``get_online_features`` on the ``ranker_v1`` FeatureService, authors and topics resolved from
the online store as serving does — after materializing the feature tables the job read.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from pipeline_helpers import PipelineRun, read_rows

from feedrank import feature_spec as spec
from feedrank.config import FeastConfig
from jobs.reference import AsOfIndex, epoch_seconds
from jobs.training_data import JOIN_ORDER, MODEL_VIEWS, VIEW_KEY_COLUMNS

# Spark on a shared 2-core machine: the session-wide pipeline build needs headroom.
pytestmark = pytest.mark.timeout(900)

N_ROWS = 1000
FLOAT_TOLERANCE = 1e-6
SHOWN_ROWS = 5
SHOWN_CELLS = 6

Row = Mapping[str, Any]


@dataclass(frozen=True)
class Pass:
    """Views checked together: their features are compared at moments picked from them."""

    name: str
    views: tuple[str, ...]
    materialized: tuple[str, ...] | None  # views materialized at each moment; None: all
    with_context: bool

    @property
    def features(self) -> set[str]:
        names = {f for v in self.views for f in spec.VIEWS[v].feature_names}
        return names | ({f.name for f in spec.CONTEXT_FEATURES} if self.with_context else set())


# Two passes, because the tables change at very different paces. Batch views change at
# midnight (daily snapshots) or once (tweet attributes), so one moment a day covers nearly
# every row; they carry the context inputs, so the context features are checked with them,
# and every view is materialized (serving resolves a tweet's author from tweet_authors).
# Stream views change on every step a counter moves: many moments, but only those two views
# need materializing at each.
STREAM_VIEWS: tuple[str, ...] = tuple(v for v in MODEL_VIEWS if spec.VIEWS[v].kind == "stream")
PASSES: tuple[Pass, ...] = (
    Pass("batch", tuple(v for v in MODEL_VIEWS if v not in STREAM_VIEWS), None, True),
    Pass("stream", STREAM_VIEWS, STREAM_VIEWS, False),
)


def _resolved(
    index: Mapping[str, AsOfIndex], row: Row, at: dt.datetime, views: Sequence[str]
) -> tuple[int | None, ...]:
    """Which feature row (``id``; None: none) each of ``views`` gives ``row`` as of ``at``,
    by the plain-Python reference index."""
    values = dict(row)
    hits: dict[str, int | None] = {}
    for name in JOIN_ORDER:  # tweet_attributes first: it gives the user_topic key
        if name not in views and name != "tweet_attributes":
            continue
        columns = VIEW_KEY_COLUMNS.get(name, {})
        key = tuple(values[columns.get(k, k)] for k in index[name].keys)
        hit = None if None in key else index[name].lookup(key, at)
        if name == "tweet_attributes":
            values["tweet_topic"] = None if hit is None else hit["tweet_topic"]
        hits[name] = None if hit is None else id(hit)
    return tuple(hits[name] for name in views)


def _materialization_moments(
    rows: Sequence[Row],
    index: Mapping[str, AsOfIndex],
    requested_at: Mapping[str, dt.datetime],
    views: Sequence[str],
) -> dict[dt.datetime, list[int]]:
    """Few moments to materialize, each with the rows (indices) checked after it.

    A row may be checked at moment ``m`` when each of ``views`` resolves, for its keys, to
    the same feature row at ``m`` as at its own ``requested_at``: for that row, the online
    store materialized up to ``m`` then holds exactly what it holds materialized up to its
    own time. Candidates are the rows' request times; a greedy cover picks the moment
    covering most uncovered rows until every row has one.
    """
    own = [_resolved(index, r, requested_at[r["request_id"]], views) for r in rows]
    candidates = sorted({requested_at[r["request_id"]] for r in rows})
    covers = {
        m: {i for i, r in enumerate(rows) if _resolved(index, r, m, views) == own[i]}
        for m in candidates
    }
    left, moments = set(range(len(rows))), {}
    while left:
        best = max(candidates, key=lambda m: len(covers[m] & left))
        moments[best] = sorted(covers[best] & left)
        left -= covers[best]
    return moments


def _mismatches(train: Row, online: np.ndarray, compared: set[str]) -> list[tuple[str, Any, float]]:
    """(feature, training value, online value) for each ``compared`` feature that differs:
    integers exact, floats within :data:`FLOAT_TOLERANCE`, missing (None/NaN) only equal
    to missing."""
    out = []
    for name, got in zip(spec.model_features(), online, strict=True):
        if name not in compared:
            continue
        want = train[name]
        if want is None or (isinstance(want, float) and math.isnan(want)):
            same = bool(np.isnan(got))
        elif spec.feature_dtype(name) == "int64":
            same = bool(got == want)  # Python compares int and float exactly
        else:
            same = bool(abs(got - want) <= FLOAT_TOLERANCE)  # False for a NaN online value
        if not same:
            out.append((name, want, float(got)))
    return out


def _describe(
    row: Row,
    requested: dt.datetime,
    moment: dt.datetime,
    cells: Sequence[tuple[str, Any, float]],
    index: Mapping[str, AsOfIndex],
) -> str:
    """One line for a row that differs, naming the views for which joining as of
    ``served_at`` (as the job does) picks another feature row than ``requested_at``."""
    served = row["served_at"]
    shifted = [
        name
        for name, a, b in zip(
            JOIN_ORDER,
            _resolved(index, row, requested, JOIN_ORDER),
            _resolved(index, row, served, JOIN_ORDER),
            strict=True,
        )
        if a != b
    ]
    shown = "; ".join(f"{n} training={w!r} online={g!r}" for n, w, g in cells[:SHOWN_CELLS])
    return (
        f"{row['request_id']} tweet {row['tweet_id']}, requested {requested.isoformat()}, "
        f"served {served.isoformat()}, store materialized to {moment.isoformat()} (same "
        f"feature rows as at requested_at): {len(cells)} features differ ({shown}; ...); "
        f"views whose row at served_at (the job's join time) is not the one at "
        f"requested_at: {shifted or 'none'}"
    )


@pytest.mark.integration
def test_training_data_equals_online_features_after_materializing_the_request_time(
    pipeline_run: PipelineRun,
) -> None:
    """Every training row (the pipeline world has about 220 of them, fewer than 1,000, so all
    are used) equals ``get_online_features(ranker_v1)`` for its user, tweet, request time
    and device, after materializing the store up to its ``requested_at``.

    - The time is ``requested_at``: serving hydrates a request's features when it arrives,
      before it is served, and the job computes the request context at that moment too.
    - Rows are checked at a few shared moments instead of one per request (see
      :data:`PASSES` and :func:`_materialization_moments`): about 3 for the batch views and
      30 for the stream views. Each moment gets a fresh Feast project (SQLite online store)
      materialized by :func:`feedrank.featurestore.materialize_as_of`, because Feast's online
      read applies no TTL: on a reused store an entity whose last row has expired would keep
      an older moment's value.
    - Context features (``ctx_*``) are compared like the others: the online request carries
      the same ``request_ts`` (the job's epoch-seconds arithmetic) and device, and the
      on-demand view runs the same :func:`feedrank.context.context_features`.
    """
    from feedrank.featurestore import apply_repo, feature_store, materialize_as_of
    from serving.hydration import online_features_matrix

    cfg = pipeline_run.settings
    requests = {r["request_id"]: r for r in pipeline_run.world["feed_requests"]}
    requested_at = {rid: r["requested_at"] for rid, r in requests.items()}
    rows = [
        row for split in ("train", "validation") for row in read_rows(pipeline_run.run_dir / split)
    ]
    rows.sort(key=lambda r: (requested_at[r["request_id"]], r["request_id"], r["tweet_id"]))
    rows = rows[:N_ROWS]
    assert len(rows) > 150
    # The rows exercise every model view (not a comparison of all-missing columns).
    for name in MODEL_VIEWS:
        first = spec.VIEWS[name].feature_names[0]
        assert any(r[first] is not None for r in rows), name
    index = {
        name: AsOfIndex(spec.VIEWS[name], read_rows(cfg.paths.features / name))
        for name in JOIN_ORDER
    }

    found: list[str] = []  # one line per row that differs
    checked = {p.name: 0 for p in PASSES}
    for check in PASSES:
        compared = check.features
        moments = _materialization_moments(rows, index, requested_at, check.views)
        for k, (moment, members) in enumerate(sorted(moments.items())):
            project = f"parity_{check.name}_{k:03d}"
            store_cfg = cfg.model_copy(update={"feast": FeastConfig(project=project)})
            apply_repo(store_cfg)
            materialize_as_of(store_cfg, moment, check.materialized)
            store = feature_store(store_cfg)
            by_request: dict[str, list[Row]] = defaultdict(list)
            for i in members:
                by_request[rows[i]["request_id"]].append(rows[i])
            for request_id, group in by_request.items():
                request = requests[request_id]
                online = online_features_matrix(
                    store,
                    request["user_id"],
                    [r["tweet_id"] for r in group],
                    epoch_seconds(request["requested_at"]),
                    request["device"],
                )
                for row, values in zip(group, online, strict=True):
                    checked[check.name] += 1
                    cells = _mismatches(row, values, compared)
                    if cells:
                        found.append(_describe(row, request["requested_at"], moment, cells, index))
    assert checked == {p.name: len(rows) for p in PASSES}
    assert not found, (
        f"{len(found)} of {len(rows)} training rows differ from the online store:\n"
        + "\n".join(found[:SHOWN_ROWS])
    )
