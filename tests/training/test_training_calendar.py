"""Calendar tests: the training chain on every day of a week and around the holidays.

The day is a setting, never the wall clock. One tiny simulated world spans Tuesday
2026-12-15 to Saturday 2027-01-02; its features and its training examples are built once
(module fixture). For each held-out day D from Wednesday Dec 23 to Saturday Jan 2 (every day
of the week; Christmas Eve and Day, New Year's Eve and Day and the days either side) a model
is trained on the retrain DAG's default window (``TRAINING_DAYS``: D-7 … D-1, D held out),
evaluated on D and put through the real promotion gate (``jobs.evaluate_gate.promote``,
thresholds unchanged), each in a registry of its own so that only the gate's sanity checks
decide. Every day's model must pass. The world's first day is the features' warm-up day,
as in ``make demo`` (no window starts on it).

The training-data job runs once over the whole span and each window's run folder holds that
run's rows of D-7 … D. A row does not depend on the window it was built in (point-in-time
joins per row, a deterministic keep hash), so this equals running the job on each window at
a fraction of the Spark time.

It can fail, and did: before each calendar day had its own draw, 3 of 11 days were refused.
At 300 users one day's draw alone moves the truth's own calibration to 0.86-1.26; at 600
users the truth stays within 0.90-1.14 and, measured by hand, 2 of 11 days were refused for a
model error after a window holding Christmas (docs/quality.md, "Every day the same model").
In the fresh-clone CI of 2026-12-06 (300 users, calendar-keyed draws) every day passed.
When training's selection day moved off the held-out day, one CI refused Dec 24 for a
negative calibration of 1.263 on a day with few negative actions: the gate now widens its
calibration bound by two sampling errors of the ratio (jobs.evaluate_gate.sanity_failures).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pandas as pd
import pytest

from feedrank import feature_spec
from feedrank.config import HEADS, Settings
from feedrank.context import holidays_between

pytestmark = pytest.mark.integration

WARM_UP_DAY = dt.date(2026, 12, 15)
FIRST_HELD_OUT = dt.date(2026, 12, 23)
LAST_DAY = dt.date(2027, 1, 2)
HELD_OUT = [
    FIRST_HELD_OUT + dt.timedelta(days=i) for i in range((LAST_DAY - FIRST_HELD_OUT).days + 1)
]
# 600 users per day are what the draw alone needs to stay inside the gate (see above), but
# the world then takes twice as long (~18 min at load 20) and the suite must stay near 30 min
# on 2 cores: 300 until the model error is fixed and the marker can go.
USERS = 300


def training_days() -> int:
    """The retrain DAG's default window (training days and the held-out day)."""
    import importlib
    import sys

    dags = str(Path(__file__).parents[2] / "dags")
    sys.path.insert(0, dags)
    try:
        return int(importlib.import_module("feed_ranking_retrain").TRAINING_DAYS)
    finally:
        sys.path.remove(dags)


def _settings_at(settings: Settings, home: Path) -> Settings:
    training = settings.training.model_copy(
        update={"n_estimators": 150, "search_budget_s": 0.0, "early_stopping_rounds": 10}
    )
    simulator = settings.simulator.model_copy(update={"users": USERS})
    return settings.model_copy(
        update={
            "paths": settings.paths.model_copy(update={"home": home}),
            "training": training,
            "simulator": simulator,
        }
    )


def window_run(whole: Path, frame: pd.DataFrame, held_out: dt.date, days: int, out: Path) -> Path:
    """The run folder of the ``days``-day window ending on ``held_out``, cut from ``whole``."""
    from jobs.train_inputs import effective_keep_rate

    first = held_out - dt.timedelta(days=days - 1)
    day = pd.to_datetime(frame["served_at"], utc=True).dt.date
    manifest = json.loads((whole / "manifest.json").read_text())
    run = out / f"{first.isoformat()}_{held_out.isoformat()}"
    splits = {
        "train": frame[(day >= first) & (day < held_out)],
        "validation": frame[day == held_out],
    }
    for split, rows in splits.items():
        (run / split).mkdir(parents=True)
        rows.drop(columns="split").to_parquet(run / split / "part-00000.parquet", index=False)
    train = splits["train"]
    manifest.update(
        run_id=run.name,
        rows={s: len(r) for s, r in splits.items()},
        positives={s: {h: int(r[f"label_{h}"].sum()) for h in HEADS} for s, r in splits.items()},
        keep_rates={
            h: effective_keep_rate(
                train[f"label_{h}"].to_numpy(), train[feature_spec.KEEP_PROB_COLUMN].to_numpy()
            )
            for h in HEADS
        },
        train_dates=[(first + dt.timedelta(days=i)).isoformat() for i in range(days - 1)],
        validation_dates=[held_out.isoformat()],
    )
    (run / "manifest.json").write_text(json.dumps(manifest))
    return run


def gate_each_day(
    cfg: Settings, whole: Path, frame: pd.DataFrame, held_out: list[dt.date], days: int
) -> tuple[dict[str, str], dict[str, dict[str, float]]]:
    """Train on each window, run the real gate; (refusals, per-head calibration) by day."""
    from feedrank.errors import FeedrankError
    from jobs.evaluate_gate import promote
    from jobs.train import train

    refused: dict[str, str] = {}
    calibration: dict[str, dict[str, float]] = {}
    for day in held_out:
        home = cfg.paths.home / f"w{days}" / day.isoformat()
        day_cfg = cfg.model_copy(update={"paths": cfg.paths.model_copy(update={"home": home})})
        run = window_run(whole, frame, day, days, day_cfg.paths.training)
        version = f"d{day:%Y%m%d}"
        train(day_cfg, data=run, version=version, show_progress=False)
        name = f"{day:%a %Y-%m-%d}"
        try:
            decision = promote(day_cfg, version, data=run)
        except FeedrankError as exc:  # the gate's one-line refusal names the first failure
            refused[name] = str(exc).split("; see")[0]
            decision = json.loads((day_cfg.paths.reports / version / "promotion.json").read_text())
        calibration[name] = {
            h: round(decision["challenger_heads"][h]["calibration"], 3) for h in HEADS
        }
    return refused, calibration


@pytest.fixture(scope="module")
def calendar_world(spark, settings: Settings, tmp_path_factory: pytest.TempPathFactory):
    """One simulated world over the whole span, its features and its training examples."""
    from feedrank.simulator.backfill import simulate_backfill
    from jobs import features, training_data

    cfg = _settings_at(settings, tmp_path_factory.mktemp("calendar"))
    first = WARM_UP_DAY + dt.timedelta(days=1)
    simulate_backfill(
        cfg,
        cfg.paths.lake,
        days=(LAST_DAY - WARM_UP_DAY).days + 1,
        start_date=WARM_UP_DAY.isoformat(),
        progress=False,
    )
    features.run_features(spark, cfg, first, LAST_DAY)
    whole = training_data.run_training_data(spark, cfg, first, LAST_DAY, run_id="whole")
    frame = pd.concat(
        pd.read_parquet(whole / split).assign(split=split) for split in ("train", "validation")
    )
    return cfg, whole, frame


@pytest.mark.timeout(1800)  # a bound for a loaded CI machine; ~4 min quiet is the aim
def test_every_held_out_day_passes_the_gate(calendar_world) -> None:
    """A model trained on the DAG's window before each held-out day passes the gate."""
    cfg, whole, frame = calendar_world
    days = training_days()
    # The window holds weekend and weekday days whatever the held-out day is.
    assert days - 1 >= 7
    assert FIRST_HELD_OUT - dt.timedelta(days=days - 1) > WARM_UP_DAY
    # The span covers a whole week and the holidays the test is about.
    assert {d.weekday() for d in HELD_OUT} == set(range(7))
    assert {dt.date(2026, 12, 24), dt.date(2026, 12, 25), dt.date(2027, 1, 1)} <= set(
        holidays_between(FIRST_HELD_OUT, LAST_DAY)
    )
    refused, calibration = gate_each_day(cfg, whole, frame, HELD_OUT, days)
    assert not refused, f"gate refused: {refused}; calibration: {calibration}"
    assert len(calibration) == len(HELD_OUT)
