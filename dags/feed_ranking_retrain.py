"""Daily retraining of the feed ranker, one UTC day per run.

wait_for_landed_data → validate → features → validate_features → training_data → train →
evaluate → promote → materialize, and off that path ``features`` → ``monitor``

Which day: a scheduled run has the data interval ``[D, D+1)`` (``CronDataIntervalTimetable``,
logical date ``D``) and processes day ``D``; a manual run or ``dag.test()`` with a zero-length
interval at ``L`` processes the last complete UTC day before ``L`` (rule and reasons in
``feedrank_tasks``). No task reads "latest" or the clock: the sensor waits for day ``D``'s
lake partitions and for each table's landed-through mark to pass ``D``'s end,
``validate`` checks them, ``features`` and ``training_data`` rebuild the
trailing window of ``training_days`` days ending with ``D`` (the last of them is the held-out
validation day; ``features`` keeps the days whose partitions were written from the same lake
days by the same code, so a daily run computes ``D`` only: ``jobs/feature_history.py``),
``validate_features`` checks the feature tables ``features`` just built,
``materialize`` loads what became valid during ``D`` into the online store,
and ``monitor`` checks the traffic served on ``D``. Tasks pass nothing to each other through
XCom: each derives its inputs from the interval (the training-data run
``<training>/<first>_<last>``, the model version from that run's manifest), so any task can be
cleared and rerun on its own.

Why Task SDK tasks that run ``feedrank <command>`` rather than ``SparkSubmitOperator``: the jobs
already are entry points that build their own SparkSession from the resolved settings (master
from the profile or ``FEEDRANK_SPARK__MASTER``, UTC, microsecond Parquet), so running the
same command a person runs needs no Airflow Spark connection (no connection string in code)
and no ``--py-files`` packaging, and four of the eight steps (train, evaluate, promote,
materialize) are not Spark jobs at all. Each command runs in a child process, so its JVM and
memory go away with the task and a crash cannot take the worker down.

Gates check what exists when they run: ``validate`` only the landed lake tables of the run's
day(s) against the day before; ``validate_features`` the window's feature tables, each day
against the day before, same thresholds and report format (``<reports>/validate/`` and
``<reports>/validate/features/``). Until 2026-12 one gate before ``features`` also checked the
feature tables of ``D``, which only this run's ``features`` builds: it passed on a fresh run
folder and failed every run from the second consecutive day on ("missing partition": D-1 had
feature tables, D none yet). A breach fails the gate at once (``AirflowFailException``, the
one-line reason in the log): the same data would breach again, so no retry.

Retries: exponential backoff (2 min, 4 min, … capped at 30 min). Reruns and retries are safe
because every job writes its partitions atomically and deterministically, the model version is
named after the training data it was trained on (an identical rerun reuses it instead of adding
a model), and promotion is a no-op when that version already is the champion.

Promotion gate: ``feedrank promote`` refusing the challenger ends ``promote`` as *skipped* with
the reason in its log; ``evaluate`` (and its report) stays successful and ``materialize`` still
runs (``none_failed``).

Monitoring: ``monitor`` runs ``feedrank monitor --date D`` (training/serving skew, drift,
live AUC, thresholds from ``settings.monitoring``; report ``<reports>/monitoring/D.json``)
once ``features`` has rebuilt the tables the skew check recomputes from. Nothing waits for
it: a breach fails ``monitor`` at once (a retry would check the same data), with one line
naming the breached checks and the report, so the run ends *failed* while training, promotion
and materialization go on. A day with no served impression carrying its feature vector (a
fresh backfill of simulated days) has nothing to check: ``monitor`` succeeds and logs so.

Backfill several past days, oldest first, one at a time (``max_active_runs=1``); the runs get
the logical dates 2026-11-02, 2026-11-03, 2026-11-04 and each processes its own day::

    airflow backfill create --dag-id feed_ranking_retrain --max-active-runs 1 \
        --from-date 2026-11-02 --to-date 2026-11-04

``catchup`` is off: when the scheduler has been down, only the newest day retrains by itself;
older days are a deliberate backfill.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import feedrank_tasks as ft
from airflow.sdk import (
    CronDataIntervalTimetable,
    Param,
    PokeReturnValue,
    TriggerRule,
    chain,
    dag,
    get_current_context,
    task,
)
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

DAG_ID = "feed_ranking_retrain"

DEFAULT_ARGS = {
    "owner": "feedrank",
    "retries": 3,
    "retry_delay": dt.timedelta(minutes=2),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": dt.timedelta(minutes=30),
    "execution_timeout": dt.timedelta(hours=2),
}


# Seven training days and the held-out day: every window holds weekend and weekday days
# whatever the run's weekday, so the calendar features (``ctx_is_weekend``,
# ``ctx_days_to_holiday``) take on the held-out day values the trees have seen. With three
# (two training days) a Monday held out after a weekend-only window was predicted at the
# weekend's rates and refused by the gate (docs/quality.md, "Every day the same model").
TRAINING_DAYS = 8


def _after_write() -> None:
    """Tests' fault hook: fail this try after its output was written (see feedrank_tasks)."""
    ti = get_current_context()["ti"]
    ft.maybe_fail_once(ti.dag_id, ti.task_id, ti.try_number)


def _window() -> ft.Days:
    """This run's training window: ``training_days`` days ending with the run's last day."""
    context = get_current_context()
    days = ft.interval_days(context["data_interval_start"], context["data_interval_end"])
    return days.widen(int(context["params"]["training_days"]) - 1)


def _gate(*args: str) -> None:
    """``feedrank validate <args>``; a breach fails the task at once, without retries.

    The same data breaches again, so retrying with backoff would only make everyone wait
    (minutes to hours) before the same one-line reason; any other error is retried.
    """
    try:
        ft.run_gate("validate", *args)
    except ft.GateFailed as exc:
        raise AirflowFailException(str(exc)) from exc


def _date_args(days: ft.Days) -> list[str]:
    """``--date D`` for every day of ``days`` (``feedrank validate`` checks each in turn)."""
    return [arg for day in days for arg in ("--date", day.isoformat())]


def _training_run() -> Path:
    """The window's training-data run folder (``feedrank training-data`` names it so)."""
    from feedrank.config import get_settings

    window = _window()
    return get_settings().paths.training / f"{window.start}_{window.end}"


@dag(
    dag_id=DAG_ID,
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=dt.datetime(2026, 11, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    params={
        "training_days": Param(
            TRAINING_DAYS,
            type="integer",
            minimum=2,
            description="Days of training data ending with the run's day (the last one is "
            "the held-out validation day).",
        ),
    },
    tags=["feedrank", "training"],
    doc_md=__doc__,
)
def feed_ranking_retrain() -> None:
    """Daily: landed data → checked → features → training data → model → gate → online.

    Beside the chain: served traffic monitored once the day's features exist.
    """

    @task.sensor(
        poke_interval=300,
        timeout=12 * 3600,
        mode="reschedule",
        exponential_backoff=True,
        max_wait=dt.timedelta(minutes=30),
    )
    def wait_for_landed_data(
        data_interval_start: dt.datetime | None = None,
        data_interval_end: dt.datetime | None = None,
    ) -> PokeReturnValue:
        """Done when every daily lake table has the run's day(s) landed, marked complete."""
        from feedrank.config import get_settings

        days = ft.interval_days(data_interval_start, data_interval_end)
        waiting = ft.not_landed(get_settings().paths.lake, ft.DAILY_LAKE_TABLES, days)
        if waiting:
            ft.log.info("waiting for %s", ", ".join(waiting))
        return PokeReturnValue(is_done=not waiting, xcom_value=days.end)

    @task
    def validate(
        data_interval_start: dt.datetime | None = None,
        data_interval_end: dt.datetime | None = None,
    ) -> list[str]:
        """Lake gate: the landed tables of the run's day(s) against the day before.

        Only the lake: the feature tables of these days do not exist yet (``features`` builds
        them next and ``validate_features`` checks them). A breach fails without retries.
        """
        days = ft.interval_days(data_interval_start, data_interval_end)
        _gate(*_date_args(days))
        _after_write()
        return [day.isoformat() for day in days]

    @task
    def features() -> dict[str, str]:
        """Feature tables for the training window (rewrites its partitions, atomically)."""
        window = _window()
        ft.run_feedrank("features", "--start", window.start, "--end", window.end)
        _after_write()
        return {"start": window.start, "end": window.end}

    @task
    def validate_features() -> list[str]:
        """Feature gate: each window day's feature tables, just built, against the day before.

        Same checks, thresholds and report format as the lake gate (report under
        ``<reports>/validate/features/``). A breach fails without retries.
        """
        window = _window()
        _gate("--features", *_date_args(window))
        _after_write()
        return [day.isoformat() for day in window]

    @task
    def training_data() -> str:
        """Point-in-time training examples for the window (one run folder, swapped in)."""
        window = _window()
        ft.run_feedrank("training-data", "--start", window.start, "--end", window.end)
        _after_write()
        return str(_training_run())

    @task
    def train() -> str:
        """Train the heads on the window's examples; returns the model version.

        The version is named after the run's day and the hash of the training data's manifest
        (:func:`feedrank_tasks.model_version_for`), so a rerun or retry on the same data finds
        its model instead of adding a duplicate.
        """
        from feedrank.config import get_settings

        run = _training_run()
        version = ft.model_version_for(run)
        if (get_settings().paths.models / version / "metadata.json").is_file():
            ft.log.info("model %s (same training data) already exists; reusing it", version)
            return version
        # The MLflow run is tagged with this DAG run's ids (AIRFLOW_CTX_* of the task).
        out = ft.run_feedrank_json("train", "--data", str(run), "--version", version, "--quiet")
        ft.log.info("model %s: MLflow run %s", version, out.get("mlflow_run_id"))
        _after_write()
        return version

    @task
    def evaluate() -> str:
        """Offline evaluation of the window's model on its held-out day; returns the report."""
        run = _training_run()
        version = ft.model_version_for(run)
        out = ft.run_feedrank_json("evaluate", "--model", version, "--data", str(run))
        ft.log.info("evaluation logged to MLflow run %s", out.get("mlflow_run_id"))
        _after_write()
        return str(out["report"])

    @task
    def promote() -> str:
        """Register the window's model and move the ``champion`` alias if the gate lets it.

        A refusal ends this task as *skipped* (reason in the log and in the report folder's
        ``promotion.json``); an error fails it. Already the champion: nothing to do.
        """
        from feedrank.config import get_settings
        from feedrank.tracking import champion_version

        run = _training_run()
        version = ft.model_version_for(run)
        if champion_version(get_settings()) == version:
            ft.log.info("%s already is the champion; nothing to promote", version)
            return version
        try:
            ft.run_feedrank("promote", "--version", version, "--data", str(run))
        except ft.FeedrankCommandError as exc:
            if f"promotion of {version} refused" in exc.reason:
                raise AirflowSkipException(exc.reason) from exc
            raise
        _after_write()
        return version

    # One writer of the online store at a time, shared with feature_materialization's task.
    @task(trigger_rule=TriggerRule.NONE_FAILED, pool=ft.ONLINE_STORE_POOL)
    def materialize(
        data_interval_start: dt.datetime | None = None,
        data_interval_end: dt.datetime | None = None,
    ) -> dict[str, str]:
        """Online store ← feature values valid during the run's day(s), both ends included."""
        start, end = ft.interval_window(data_interval_start, data_interval_end, ft.DAY)
        ft.materialize_window(start, end)
        _after_write()
        return {"start": start.isoformat(), "end": end.isoformat()}

    @task
    def monitor(
        data_interval_start: dt.datetime | None = None,
        data_interval_end: dt.datetime | None = None,
    ) -> list[str]:
        """Skew, drift and live AUC of each day's served traffic; returns the report paths.

        A breach fails this task without retries (the same data would breach again); any
        other error fails it like the other steps, with retries.
        """
        days = ft.interval_days(data_interval_start, data_interval_end)
        reports, breaches = [], []
        for day in days:
            try:
                reports.append(str(ft.monitor_day(day)))
            except ft.FeedrankCommandError as exc:
                if ft.MONITOR_BREACH not in exc.reason:
                    raise
                breaches.append(exc.reason)
        if breaches:
            raise AirflowFailException(" | ".join(breaches))
        return reports

    feature_tables = features()
    chain(
        wait_for_landed_data(),
        validate(),
        feature_tables,
        validate_features(),
        training_data(),
        train(),
        evaluate(),
        promote(),
        materialize(),
    )
    feature_tables >> monitor()


feed_ranking_retrain()
