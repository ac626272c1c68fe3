"""``feedrank promote``: the gate in front of the MLflow ``champion`` alias.

A challenger becomes champion only if

1. it passes the sanity checks on the held-out rows — every head's AUC above
   ``training.promote_min_auc``, calibration within ``training.promote_calibration_tolerance``
   of 1 plus two sampling errors of the ratio (``cal/√positives``: on a held-out day with
   100 positives the labels alone move it by ~10 %), no NaN metric — which is what rejects a
   model trained on shuffled labels; and
2. it beats or ties the current champion on the *same* rows: the champion is re-scored on
   the challenger's held-out data now (metrics from another day are not comparable), and the
   challenger's mean RCE over heads must be ≥ the champion's. Mean RCE is the comparison
   because it rewards both ranking and calibration and is far less noisy than NDCG on
   realised engagements.

The decision, with both models' numbers, is written to
``<paths.reports>/<version>/promotion.json`` whether or not the alias moves, and logged to the
challenger's MLflow run. A challenger that passes is registered as a version of
``mlflow.model_name`` and the ``champion`` alias moves to it (:mod:`feedrank.tracking`);
:func:`rollback` moves it back to the champion it replaced.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
from pathlib import Path
from typing import Any

from feedrank import model_files, tracking
from feedrank.config import HEADS, Settings
from feedrank.errors import FeedrankError
from feedrank.exporter import record_outcome, record_time
from jobs.evaluate import prepare_rows, score_model
from jobs.train_inputs import load_training_data, resolve_run

log = logging.getLogger("feedrank.promote")


def sanity_failures(metrics: dict[str, Any], settings: Settings) -> list[str]:
    """Reasons a model fails the sanity checks (empty when it passes)."""
    failures: list[str] = []
    tol = settings.training.promote_calibration_tolerance
    for head in HEADS:
        m = metrics["heads"][head]
        for key in ("auc", "pr_auc", "logloss", "rce", "calibration"):
            value = m.get(key)
            if value is None or not math.isfinite(value):
                failures.append(f"{head} {key} is not a number")
        auc, cal = m.get("auc"), m.get("calibration")
        if auc is not None and auc <= settings.training.promote_min_auc:
            failures.append(f"{head} AUC {auc:.3f} <= {settings.training.promote_min_auc}")
        if cal is not None and math.isfinite(cal):
            # mean prediction / mean label: the label's count is Poisson-like, so on N
            # positives the ratio itself moves by ~cal/sqrt(N); refuse beyond two of those.
            positives = m.get("positives") or 0.0
            slack = 2.0 * cal / math.sqrt(positives) if positives > 0 else 0.0
            if abs(cal - 1.0) > tol + slack:
                failures.append(
                    f"{head} calibration {cal:.3f} outside 1±{tol}"
                    + (
                        f" (+{slack:.3f} sampling slack, {positives:.0f} positives)"
                        if slack
                        else ""
                    )
                )
    return failures


def promote(
    settings: Settings,
    version: str,
    data: str | Path | None = None,
    lake_root: Path | None = None,
) -> dict[str, Any]:
    """Run the gate; register the challenger and move ``champion`` to it if it passes.

    Args:
        settings: Resolved settings.
        version: The challenger's version.
        data: Held-out data (training-data run); default: the challenger's own run.
        lake_root: Lake with the ``oracle`` table (only reported, not gated on).

    Returns:
        The decision record (also written to ``promotion.json``).

    Raises:
        FeedrankError: The challenger is refused (one line with the first reason); the
            champion alias is unchanged.
    """
    challenger = model_files.load_model(tracking.local_model_dir(settings, version), settings)
    if data is None:
        data = (challenger.metadata.get("training_data") or {}).get("run")
        if data is None or not Path(data).is_dir():
            raise FeedrankError(f"model {version}: its training-data run is gone; pass --data")
    rows = prepare_rows(settings, load_training_data(resolve_run(settings, data)), lake_root)
    challenger_metrics, _ = score_model(challenger, rows, settings)
    decision: dict[str, Any] = {
        "challenger": version,
        "data_run": str(rows.data.run_dir),
        "rows": len(rows.frame),
        "challenger_summary": challenger_metrics["summary"],
        "challenger_heads": {
            h: {k: challenger_metrics["heads"][h][k] for k in ("auc", "rce", "calibration")}
            for h in HEADS
        },
        "champion": None,
        "champion_summary": None,
        "failures": sanity_failures(challenger_metrics, settings),
    }
    current = tracking.champion_version(settings)
    if current is not None and current != version:
        try:
            champion = model_files.load_model(tracking.local_model_dir(settings, current), settings)
        except FeedrankError as exc:
            # A champion that no longer loads cannot be defended; a sane challenger replaces it.
            log.warning(
                "champion %s does not load (%s); judging the challenger alone", current, exc
            )
            decision["champion_error"] = str(exc)
        else:
            champion_metrics, _ = score_model(champion, rows, settings)
            decision["champion"] = current
            decision["champion_summary"] = champion_metrics["summary"]
            mine = challenger_metrics["summary"]["mean_rce"]
            theirs = champion_metrics["summary"]["mean_rce"]
            if mine is None or (theirs is not None and mine < theirs):
                decision["failures"].append(
                    f"mean RCE {mine if mine is None else round(mine, 3)} < champion {current}'s "
                    f"{round(theirs, 3)} on the same rows"
                )
    decision["promoted"] = not decision["failures"]
    run_id = (challenger.metadata.get("training") or {}).get("mlflow_run_id")
    decision["mlflow_run_id"] = run_id
    out = settings.paths.reports / version
    out.mkdir(parents=True, exist_ok=True)
    (out / "promotion.json").write_text(json.dumps(decision, indent=2))
    if run_id:
        tracking.log_to_run(
            settings,
            run_id,
            metrics={"gate": {"promoted": int(decision["promoted"])}},
            tags={"gate": "promoted" if decision["promoted"] else "refused"},
            artifacts={"gate": out / "promotion.json"},
        )
    if decision["failures"]:
        record_outcome(
            settings,
            "feedrank_batch_promotions_refused_total",
            "Challengers the promotion gate refused.",
            1,
            kind="counter",
        )
        raise FeedrankError(
            f"promotion of {version} refused: {decision['failures'][0]}"
            + (f" (+{len(decision['failures']) - 1} more)" if len(decision["failures"]) > 1 else "")
            + f"; see {out / 'promotion.json'}"
        )
    registered = tracking.set_champion(settings, version)
    decision["registered_version"] = str(registered.version)
    (out / "promotion.json").write_text(json.dumps(decision, indent=2))
    log.info(
        "promoted %s as %s version %s (previous champion %s)",
        version,
        registered.name,
        registered.version,
        current,
    )
    record_time(
        settings,
        "feedrank_batch_last_promoted_timestamp_seconds",
        "When the promotion gate last made a new champion.",
    )
    trained_on = challenger.metadata.get("training_data") or {}
    days = [*(trained_on.get("train_dates") or []), *(trained_on.get("validation_dates") or [])]
    if days:
        record_outcome(
            settings,
            "feedrank_batch_champion_data_day_timestamp_seconds",
            "Last data day (UTC midnight) of the champion's training data.",
            dt.datetime.fromisoformat(max(days)).replace(tzinfo=dt.UTC).timestamp(),
        )
    return decision


def rollback(settings: Settings) -> dict[str, Any]:
    """Move ``champion`` back to the version the current champion replaced (no gate: the
    previous champion passed it when it was promoted)."""
    before, after = tracking.rollback(settings)
    log.info("rolled back %s -> %s", before.version, after.version)
    return {
        "rolled_back": {
            "version": str(before.version),
            "feedrank_version": before.tags.get(tracking.VERSION_TAG),
        },
        "champion": {
            "version": str(after.version),
            "feedrank_version": after.tags.get(tracking.VERSION_TAG),
        },
    }
