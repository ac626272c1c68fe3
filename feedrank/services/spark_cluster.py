"""The local Spark standalone cluster (master + workers from the pip package) of the cluster
profile."""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from pathlib import Path

from feedrank.config import Settings
from feedrank.errors import FeedrankError
from feedrank.services.process import (
    owned_pid,
    require_free_ports,
    resolve,
    say,
    service_lock,
    spawn,
    terminate,
)


def spark_dir(settings: Settings) -> Path:
    return settings.paths.home / "spark-cluster"


def _spark_properties(settings: Settings) -> Path:
    """Per-run-folder properties file; its path also marks the processes as ours."""
    path = spark_dir(settings) / "spark-defaults.conf"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "spark.master.rest.enabled false\n"
        f"spark.worker.cleanup.enabled true\n"
        f"spark.local.dir {spark_dir(settings) / 'local'}\n"
    )
    return path


def spark_master_url(settings: Settings | None = None) -> str:
    """``spark://127.0.0.1:<spark.master_port>`` of the local standalone master."""
    return f"spark://127.0.0.1:{resolve(settings).spark.master_port}"


def spark_alive_workers(settings: Settings) -> int | None:
    """Alive workers the master reports on its JSON endpoint; None if it does not answer."""
    url = f"http://127.0.0.1:{settings.spark.master_webui_port}/json/"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(json.load(response).get("aliveworkers", 0))
    except (OSError, ValueError):
        return None


def spark_cluster_ready(settings: Settings | None = None, timeout_s: float = 0.0) -> bool:
    """True once the master reports ``spark.cluster_workers`` alive workers."""
    settings = resolve(settings)
    deadline = time.monotonic() + timeout_s
    while True:
        alive = spark_alive_workers(settings)
        if alive is not None and alive >= settings.spark.cluster_workers:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.5)


def spark_processes(settings: Settings) -> list[str]:
    return ["spark-master"] + [
        f"spark-worker-{i}" for i in range(1, settings.spark.cluster_workers + 1)
    ]


def spark_cluster_up(settings: Settings | None = None) -> bool:
    """Start a standalone master and ``spark.cluster_workers`` workers on 127.0.0.1.

    Returns:
        True if this call started any process; False if the whole cluster already ran.
    """
    settings = resolve(settings)
    spark_class = str(Path(sys.executable).parent / "spark-class")
    with service_lock(settings, "spark-cluster"):
        props = _spark_properties(settings)
        marker = str(props)
        env = {
            "SPARK_LOCAL_IP": "127.0.0.1",
            "SPARK_LOG_DIR": str(settings.paths.logs),
            "PYSPARK_PYTHON": sys.executable,
            "SPARK_NO_DAEMONIZE": "1",
        }
        started_any = False
        if owned_pid(settings, "spark-master", marker) is None:
            require_free_ports(
                "the Spark master",
                "127.0.0.1",
                settings.spark.master_port,
                settings.spark.master_webui_port,
            )
            say(f"starting Spark master on {spark_master_url(settings)}")
            argv = [
                spark_class, "org.apache.spark.deploy.master.Master",
                "--host", "127.0.0.1", "--port", str(settings.spark.master_port),
                "--webui-port", str(settings.spark.master_webui_port),
                "--properties-file", marker,
            ]  # fmt: skip
            spawn(settings, "spark-master", argv, env)
            started_any = True
        for i, name in enumerate(spark_processes(settings)[1:], start=1):
            if owned_pid(settings, name, marker) is not None:
                continue
            work_dir = spark_dir(settings) / f"work-{i}"
            work_dir.mkdir(parents=True, exist_ok=True)
            say(f"starting {name}")
            argv = [
                spark_class, "org.apache.spark.deploy.worker.Worker",
                "--host", "127.0.0.1", "--cores", str(settings.spark.worker_cores),
                "--memory", settings.spark.worker_memory, "--work-dir", str(work_dir),
                # 0 = any free port: fixed worker UI ports collide between run folders.
                "--webui-port", "0", "--properties-file", marker,
                spark_master_url(settings),
            ]  # fmt: skip
            spawn(settings, name, argv, env)
            started_any = True
        # Workers register within seconds on an idle machine; minutes on a saturated one.
        if not spark_cluster_ready(settings, 180.0):
            raise FeedrankError(
                f"Spark cluster did not report {settings.spark.cluster_workers} workers; see "
                f"{settings.paths.logs}/spark-*.log"
            )
        if started_any:
            say(f"Spark cluster ready: {spark_master_url(settings)}")
        return started_any


def spark_cluster_down(settings: Settings | None = None) -> bool:
    """Stop the workers, then the master. True if any process was stopped."""
    settings = resolve(settings)
    marker = str(spark_dir(settings) / "spark-defaults.conf")
    stopped = False
    with service_lock(settings, "spark-cluster"):
        for name in reversed(spark_processes(settings)):
            pid = owned_pid(settings, name, marker)
            if pid is not None:
                terminate(settings, name, pid)
                stopped = True
    return stopped
