"""Calendar tests: the training chain on every day of a week and around the holidays.

The day is a setting, never the wall clock: one simulated world spans Tuesday 2026-12-22 to
Saturday 2027-01-02, its features are built once, and for each held-out day D from Thursday
Dec 24 to Saturday Jan 2 (every day of the week, Christmas Eve and Day, New Year's Eve and
Day, and the day after) a model is trained on D-2 and D-1, as the retrain DAG's default
3-day window does, then evaluated on D and put through the real promotion gate
(``jobs.evaluate_gate.promote``, thresholds unchanged), each in a registry of its own so
that only the gate's sanity checks decide. Every day's model must pass.

The training-data job runs once over the whole span; each day's run folder holds that run's
rows of D-2..D. A row does not depend on the window it was built in (point-in-time joins per
row, a deterministic keep hash), so this equals running the job on each window, at a tenth
of the Spark time.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pandas as pd
import pytest

from feedrank.config import HEADS, Settings
from feedrank.context import holidays_between

pytestmark = [
    pytest.mark.integration,
    # Unfinished (docs/quality.md, "Every day the same model"): building this world took more
    # than 10 minutes on the shared 2-core VM, and held-out Monday after a weekend window is
    # still expected to fail the gate on retweet (measured on the demo's world: 1.289).
    pytest.mark.skip(reason="calendar test unfinished: too slow, Monday still fails the gate"),
]

FIRST_DAY = dt.date(2026, 12, 22)
LAST_DAY = dt.date(2027, 1, 2)
HELD_OUT = [FIRST_DAY + dt.timedelta(days=i) for i in range(2, (LAST_DAY - FIRST_DAY).days + 1)]
TRAIN_DAYS = 2
USERS = 400


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


def _day_run(whole: Path, frame: pd.DataFrame, held_out: dt.date, out: Path) -> Path:
    """The run folder of the window ending on ``held_out``, cut from the whole-span run."""
    first = held_out - dt.timedelta(days=TRAIN_DAYS)
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
    manifest.update(
        run_id=run.name,
        rows={s: len(r) for s, r in splits.items()},
        positives={s: {h: int(r[f"label_{h}"].sum()) for h in HEADS} for s, r in splits.items()},
        train_dates=[(first + dt.timedelta(days=i)).isoformat() for i in range(TRAIN_DAYS)],
        validation_dates=[held_out.isoformat()],
    )
    (run / "manifest.json").write_text(json.dumps(manifest))
    return run


@pytest.fixture(scope="module")
def calendar_world(spark, settings: Settings, tmp_path_factory: pytest.TempPathFactory):
    """One simulated world over the whole span, its features and its training examples."""
    from feedrank.simulator.backfill import simulate_backfill
    from jobs import features, training_data

    home = tmp_path_factory.mktemp("calendar")
    cfg = _settings_at(settings, home)
    days = (LAST_DAY - FIRST_DAY).days + 1
    simulate_backfill(
        cfg, cfg.paths.lake, days=days, start_date=FIRST_DAY.isoformat(), progress=False
    )
    features.run_features(spark, cfg, FIRST_DAY, LAST_DAY)
    whole = training_data.run_training_data(spark, cfg, FIRST_DAY, LAST_DAY, run_id="whole")
    frame = pd.concat(
        pd.read_parquet(whole / split).assign(split=split) for split in ("train", "validation")
    )
    return cfg, whole, frame


@pytest.mark.timeout(600)
def test_every_held_out_day_passes_the_gate(calendar_world) -> None:
    """A model trained on the two days before each held-out day passes the unchanged gate."""
    from jobs.evaluate_gate import promote
    from jobs.train import train

    cfg, whole, frame = calendar_world
    # The span covers a whole week and the holidays the test is about.
    assert {d.weekday() for d in HELD_OUT} == set(range(7))
    assert {dt.date(2026, 12, 24), dt.date(2026, 12, 25), dt.date(2027, 1, 1)} <= set(
        holidays_between(FIRST_DAY, LAST_DAY)
    )
    refused: dict[str, str] = {}
    calibration: dict[str, dict[str, float]] = {}
    for held_out in HELD_OUT:
        day_cfg = cfg.model_copy(
            update={"paths": cfg.paths.model_copy(update={"home": cfg.paths.home / str(held_out)})}
        )
        run = _day_run(whole, frame, held_out, day_cfg.paths.training)
        version = f"d{held_out:%Y%m%d}"
        train(day_cfg, data=run, version=version, show_progress=False)
        try:
            decision = promote(day_cfg, version, data=run, lake_root=cfg.paths.lake)
        except Exception as exc:  # the gate's one-line refusal names the first failure
            refused[f"{held_out:%a %Y-%m-%d}"] = str(exc).split("; see")[0]
            continue
        assert decision["promoted"]
        calibration[f"{held_out:%a %Y-%m-%d}"] = {
            h: round(decision["challenger_heads"][h]["calibration"], 3) for h in HEADS
        }
    assert not refused, f"gate refused: {refused}; passed: {calibration}"
