"""``python -m feedrank.services up | down | status | setup | fetch-jars | airflow-*`` (the
Makefile's service commands)."""

from __future__ import annotations

import shlex

import typer

from feedrank.config import get_settings
from feedrank.services.airflow_standalone import (
    airflow_down,
    airflow_env,
    airflow_migrate,
    airflow_password_file,
    airflow_up,
    airflow_url,
)
from feedrank.services.jars import fetch_jars
from feedrank.services.kafka_broker import kafka_down, kafka_up
from feedrank.services.process import say
from feedrank.services.redis_server import redis_down, redis_up
from feedrank.services.serve_processes import serve_down, serve_up
from feedrank.services.spark_cluster import spark_cluster_down, spark_cluster_up
from feedrank.services.status import profile_services, status

app = typer.Typer(
    help="Start/stop feedrank's local services (Kafka, Redis, Spark cluster, serve, Airflow).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command("up")
def _cli_up(
    kafka: bool = typer.Option(True, "--kafka/--no-kafka", help="Start the Kafka broker."),
    redis: bool = typer.Option(False, "--redis", help="Also start redis-server."),
    spark_cluster: bool = typer.Option(
        False, "--spark-cluster", help="Also start the Spark standalone cluster."
    ),
) -> None:
    """Start the services of FEEDRANK_PROFILE (plus the ones flagged); no-op if running."""
    settings = get_settings()
    wanted = set(profile_services(settings)) | {
        name for name, flag in (("redis", redis), ("spark-cluster", spark_cluster)) if flag
    }
    if not kafka:
        wanted.discard("kafka")
    starters = {
        "kafka": kafka_up,
        "redis": redis_up,
        "spark-cluster": spark_cluster_up,
        "serve": serve_up,
    }
    for name in ("kafka", "redis", "spark-cluster", "serve"):
        if name in wanted:
            started = starters[name](settings)
            say(f"{name}: {'started' if started else 'already running'}")


@app.command("down")
def _cli_down(
    kafka: bool = typer.Option(True, "--kafka/--no-kafka", help="Stop the Kafka broker."),
    redis: bool = typer.Option(True, "--redis/--no-redis", help="Stop redis-server."),
    spark_cluster: bool = typer.Option(
        True, "--spark-cluster/--no-spark-cluster", help="Stop the Spark cluster."
    ),
) -> None:
    """Stop every service started from this run folder (whatever the profile); no-op if none."""
    settings = get_settings()
    # Serve processes first: they commit their offsets on the way out, which needs Kafka.
    if kafka:
        say(f"serve: {'stopped' if serve_down(settings) else 'not running'}")
    for name, flag, stop in (
        ("spark-cluster", spark_cluster, spark_cluster_down),
        ("redis", redis, redis_down),
        ("kafka", kafka, kafka_down),
    ):
        if flag:
            say(f"{name}: {'stopped' if stop(settings) else 'not running'}")


@app.command("status")
def _cli_status() -> None:
    """Print each service's pid and readiness."""
    for name, info in status().items():
        state = "ready" if info["ready"] else ("starting" if info["pid"] else "stopped")
        pid = info["pid"] or "-"
        typer.echo(f"{name:<16} {state:<9} pid={pid!s:<8} {info['endpoint']}")


@app.command("setup")
def _cli_setup() -> None:
    """Fetch the jars and migrate the Airflow DB when not done yet (used by ``make setup``)."""
    settings = get_settings()
    fetch_jars(settings)
    airflow_migrate(settings)


@app.command("fetch-jars")
def _cli_fetch_jars(
    force: bool = typer.Option(False, "--force", help="Refetch even if cached."),
) -> None:
    """Fetch the Kafka broker and Spark-connector jars into .cache/."""
    fetch_jars(get_settings(), force=force)


@app.command("airflow-env")
def _cli_airflow_env() -> None:
    """Print ``export`` lines of the Airflow environment (``eval "$(... airflow-env)"``)."""
    for key, value in airflow_env().items():
        typer.echo(f"export {key}={shlex.quote(value)}")


@app.command("airflow-up")
def _cli_airflow_up() -> None:
    """Start ``airflow standalone`` with dags/ on 127.0.0.1; print the UI and password file."""
    settings = get_settings()
    started = airflow_up(settings)
    say(f"airflow: {'started' if started else 'already running'}")
    typer.echo(f"Airflow UI: {airflow_url(settings)}  (user admin)")
    typer.echo(f"admin password: in {airflow_password_file(settings)}")
    typer.echo(f"log: {settings.paths.logs / 'airflow.log'}; stop with: make down")


@app.command("airflow-down")
def _cli_airflow_down() -> None:
    """Stop this run folder's ``airflow standalone``; no-op if it is not running."""
    say(f"airflow: {'stopped' if airflow_down(get_settings()) else 'not running'}")


def main() -> None:
    """Run the service commands with feedrank's one-line errors."""
    from feedrank.cli_runner import run_cli
    from feedrank.logs import setup_logging

    setup_logging("services")
    run_cli(app, prog_name="python -m feedrank.services")


if __name__ == "__main__":
    main()
