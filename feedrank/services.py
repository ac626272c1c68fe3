"""Start, stop and probe the local services feedrank runs on: the one place that does it.

``make up`` / ``make down``, the test fixtures (``tests/conftest.py``) and the demo all go
through these functions, so what tests exercise is what users run:

* Kafka: an Apache Kafka 4.x KRaft broker+controller from the jars ``infra/kafka/pom.xml``
  fetches into ``.cache/kafka-jars``, started as ``java -cp '<jars>/*' kafka.Kafka <config>``
  with its config rendered from settings into the run folder. Ready only when a kafka-python
  metadata request succeeds; topics come from ``settings.kafka.topics``.
* Redis: Debian's ``redis-server`` on 127.0.0.1 (installed with apt-get when absent).
* Spark: a local standalone master + workers from the pip package (``spark-class``).
* Airflow: the environment (AIRFLOW_HOME in the run folder, dags folder = ``dags/``) and the
  SQLite metadata DB migration.

Every process gets a pid file under ``paths.pids`` and a log under ``paths.logs``. A pid file
is trusted only if its process is alive and its command line (or working folder) names this
run folder, so a stale file (reboot, ``kill -9``) never makes us signal someone else's
process. Starting a running service or stopping a stopped one is a no-op; a port taken by
another program is a clear error, not a half-started service.

Command line (used by the Makefile)::

    python -m feedrank.services up [--redis] [--spark-cluster] [--no-kafka]
    python -m feedrank.services down | status | setup | fetch-jars | airflow-env
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import importlib.metadata
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from feedrank.config import PROJECT_ROOT, Settings, get_settings
from feedrank.errors import FeedrankError
from feedrank.readiness import kafka_ready, redis_ready

if TYPE_CHECKING:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

log = logging.getLogger("feedrank.services")

INFRA = PROJECT_ROOT / "infra"
KAFKA_POM = INFRA / "kafka" / "pom.xml"
DAGS_FOLDER = PROJECT_ROOT / "dags"
# How long a stop waits for a clean exit before SIGKILL (a broker flushes its logs first).
STOP_TIMEOUT_S = 30.0
_KAFKA_MAIN = "kafka.Kafka"


def _settings(settings: Settings | None) -> Settings:
    return settings or get_settings()


def _say(message: str) -> None:
    """Progress for people running ``make``; the same line goes to the log."""
    log.info(message)
    print(f"[feedrank.services] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- processes


def _pid_file(settings: Settings, name: str) -> Path:
    return settings.paths.pids / f"{name}.pid"


def _is_running(pid: int) -> bool:
    """True if ``pid`` runs and is not a zombie (reaping it if it is our exited child)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # The state follows the parenthesised command name, which may itself contain spaces.
    if stat.rsplit(")", 1)[1].split()[0] == "Z":
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        return False
    return True


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def _cwd(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""


def _owned_pid(settings: Settings, name: str, marker: str) -> int | None:
    """The live pid recorded for ``name`` if its command line or working folder is ``marker``.

    (redis-server rewrites its process title, so it is recognised by its ``--dir``.)

    A pid file whose process is gone, or whose pid now belongs to another program (pids are
    reused), is removed and never signalled.
    """
    path = _pid_file(settings, name)
    try:
        pid = int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        path.unlink(missing_ok=True)
        return None
    if _is_running(pid) and (marker in _cmdline(pid) or _cwd(pid) == marker):
        return pid
    log.info("removing stale pid file %s (pid %s is not our %s)", path, pid, name)
    path.unlink(missing_ok=True)
    return None


def _spawn(
    settings: Settings,
    name: str,
    argv: list[str],
    env: dict[str, str] | None = None,
    output: str | None = None,
) -> int:
    """Start ``argv`` detached (own session, so ``make up`` can exit); pid file + log.

    Its stdout/stderr go to ``logs/<output>`` (default ``<name>.log``; services that write
    their own ``<name>.log`` pass ``<name>.out`` for what they print before that).
    """
    settings.paths.logs.mkdir(parents=True, exist_ok=True)
    settings.paths.pids.mkdir(parents=True, exist_ok=True)
    out = settings.paths.logs / (output or f"{name}.log")
    log.info("starting %s: %s", name, shlex.join(argv))
    with out.open("ab") as sink:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
            cwd=settings.paths.home,
        )
    _pid_file(settings, name).write_text(f"{proc.pid}\n")
    return proc.pid


def _terminate(settings: Settings, name: str, pid: int, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM the process group, wait for the exit, SIGKILL after ``timeout_s``."""
    _say(f"stopping {name} (pid {pid})")
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            # _spawn made each service a session leader: its group holds only its children.
            if os.getpgid(pid) == pid:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not _is_running(pid):
                _pid_file(settings, name).unlink(missing_ok=True)
                return
            time.sleep(0.1)
        if sig == signal.SIGTERM:
            log.warning("%s (pid %s) ignored SIGTERM for %.0f s; killing it", name, pid, wait_s)
    raise FeedrankError(f"{name} (pid {pid}) did not exit after SIGKILL")


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock across processes (released when the block exits)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _lock(settings: Settings, name: str) -> contextlib.AbstractContextManager[None]:
    """Serialise up/down of one service of one run folder across processes."""
    return _file_lock(settings.paths.pids / f"{name}.lock")


def _require_free_ports(service: str, host: str, *ports: int) -> None:
    """Fail clearly when a port is taken, instead of starting a process that cannot bind.

    Without this, a foreign server on the same port would answer the readiness probe while
    our process dies on "address already in use".
    """
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            # Servers set SO_REUSEADDR too, so sockets in TIME_WAIT do not count as taken.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                raise FeedrankError(
                    f"cannot start {service}: {host}:{port} is in use by another process "
                    f"({exc.strerror}); pick other ports with FEEDRANK_* overrides"
                ) from exc


def _render(template: Path, target: Path, **values: object) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(string.Template(template.read_text()).substitute(values))
    return target


# --------------------------------------------------------------------------- jars


def kafka_jars_dir(settings: Settings | None = None) -> Path:
    """Folder of the Kafka broker's jars (``make setup`` / :func:`fetch_jars` fill it)."""
    return _settings(settings).paths.cache / "kafka-jars"


def spark_jars_dir(settings: Settings | None = None) -> Path:
    """Folder of the spark-sql-kafka connector jars that ``feedrank.spark`` passes to Spark."""
    return _settings(settings).paths.cache / "spark-jars"


def fetch_jars(settings: Settings | None = None, force: bool = False) -> bool:
    """Fetch the Kafka and Spark-connector jars with Maven unless already cached.

    A stamp file records what a folder was filled for (versions and a hash of the pom); any
    change refetches. Maven fills a fresh folder that then replaces the old one, so stale
    jars never mix with new ones and a broker starting meanwhile never sees a half-filled
    folder. Concurrent callers (several test sessions) wait on a lock instead of racing.

    Args:
        settings: resolved settings (``kafka.version`` picks the broker).
        force: refetch even when the stamps match.

    Returns:
        True if Maven ran.

    Raises:
        FeedrankError: Maven is missing or the fetch failed.
    """
    settings = _settings(settings)
    spark_version = importlib.metadata.version("pyspark")
    pom_hash = hashlib.sha256(KAFKA_POM.read_bytes()).hexdigest()[:12]
    wanted = {
        "kafka": (kafka_jars_dir(settings), f"kafka {settings.kafka.version}"),
        "spark-connector": (spark_jars_dir(settings), f"spark-sql-kafka {spark_version}"),
    }
    cache = settings.paths.cache
    ran = False
    for profile, (folder, what) in wanted.items():
        stamp_text = f"{what} pom {pom_hash}"
        stamp = folder / ".fetched"
        if not force and stamp.is_file() and stamp.read_text().strip() == stamp_text:
            continue
        with _file_lock(cache / "jars.lock"):
            if not force and stamp.is_file() and stamp.read_text().strip() == stamp_text:
                continue  # another process fetched them while we waited
            mvn = shutil.which("mvn")
            if mvn is None:
                raise FeedrankError("mvn not found: install Maven (apt-get install -y maven)")
            staging = cache / f".staging-{profile}"
            shutil.rmtree(staging, ignore_errors=True)
            _say(f"fetching {what} jars from Maven Central into {folder}")
            argv = [
                mvn, "-B", "-Dstyle.color=never", "-f", str(KAFKA_POM), "-P", profile,
                f"-Dkafka.version={settings.kafka.version}", f"-Dspark.version={spark_version}",
                f"-Dcache.dir={staging}", "dependency:copy-dependencies",
            ]  # fmt: skip
            result = subprocess.run(argv, check=False)
            if result.returncode != 0:
                shutil.rmtree(staging, ignore_errors=True)
                raise FeedrankError(f"mvn failed ({result.returncode}) fetching {what} jars")
            fetched = staging / folder.name
            (fetched / ".fetched").write_text(stamp_text + "\n")
            old = cache / f".old-{folder.name}"
            shutil.rmtree(old, ignore_errors=True)
            if folder.exists():
                folder.rename(old)
            fetched.rename(folder)
            shutil.rmtree(old, ignore_errors=True)
            shutil.rmtree(staging, ignore_errors=True)
            ran = True
    return ran


# --------------------------------------------------------------------------- kafka


def _kafka_dir(settings: Settings) -> Path:
    return settings.paths.home / "kafka"


def _kafka_config(settings: Settings) -> Path:
    return _kafka_dir(settings) / "server.properties"


def _cluster_id(settings: Settings) -> str:
    """This run folder's KRaft cluster id (a Kafka-style base64 UUID), created once."""
    path = _kafka_dir(settings) / "cluster.id"
    if path.is_file():
        return path.read_text().strip()
    cluster_id = "-"
    # Kafka's own Uuid.randomUuid() refuses ids starting with '-' (they read as CLI flags).
    while cluster_id.startswith("-"):
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(cluster_id + "\n")
    return cluster_id


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    java = Path(java_home) / "bin" / "java" if java_home else shutil.which("java")
    if not java or not Path(java).exists():
        raise FeedrankError("java not found: install a JDK 17+ (apt-get install -y default-jdk)")
    return str(java)


def _prepare_kafka(settings: Settings) -> tuple[Path, Path]:
    """Render server.properties and log4j2.properties; format storage once."""
    fetch_jars(settings)
    kafka_dir = _kafka_dir(settings)
    data_dir = kafka_dir / "data"
    config = _render(
        INFRA / "kafka" / "server.properties.template",
        _kafka_config(settings),
        host=settings.kafka.host,
        port=settings.kafka.port,
        controller_port=settings.kafka.controller_port,
        log_dirs=data_dir,
        num_partitions=3,
        offsets_partitions=10,
    )
    log4j = _render(
        INFRA / "kafka" / "log4j2.properties.template",
        kafka_dir / "log4j2.properties",
        log_file=settings.paths.logs / "kafka.log",
    )
    # StorageTool costs a JVM start; --ignore-formatted makes it safe, the check makes it free.
    if not (data_dir / "meta.properties").is_file():
        argv = [
            _java(), f"-Dlog4j2.configurationFile={log4j}", "-cp",
            f"{kafka_jars_dir(settings)}/*", "kafka.tools.StorageTool", "format",
            "--standalone", "--ignore-formatted",
            "--cluster-id", _cluster_id(settings), "--config", str(config),
        ]  # fmt: skip
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise FeedrankError(
                f"formatting Kafka storage failed: {(result.stderr or result.stdout).strip()}"
            )
        log.info("formatted Kafka storage: %s", result.stdout.strip())
    return config, log4j


def topic_partition_counts(admin: KafkaAdminClient) -> dict[str, int]:
    """Partitions per topic in the cluster, as a ``KafkaAdminClient`` sees them."""
    return {t["topic"]: len(t["partitions"]) for t in admin.describe_topics()}


def create_topics(admin: KafkaAdminClient, topics: list[NewTopic], timeout_s: float = 30.0) -> None:
    """Create ``topics`` (``kafka.admin.NewTopic``) and wait until the cluster's metadata lists
    every one with all its partitions, so producers and consumers find them at once.

    Raises:
        kafka.errors.KafkaError: the broker refused a topic (the admin client raises it).
        FeedrankError: the topics did not show up in the metadata within ``timeout_s``.
    """
    admin.create_topics(topics)
    deadline = time.monotonic() + timeout_s
    while True:
        counts = topic_partition_counts(admin)
        if all(counts.get(t.name) == t.num_partitions for t in topics):
            return
        if time.monotonic() >= deadline:
            raise FeedrankError(f"topics {[t.name for t in topics]} not in the metadata yet")
        time.sleep(0.1)


def ensure_topics(settings: Settings | None = None) -> list[str]:
    """Create every topic of ``settings.kafka.topics``; align existing ones. Idempotent.

    Existing topics get their declared ``retention.ms`` / ``max.message.bytes`` and are grown
    to the declared partition count (Kafka cannot shrink a topic; that is reported).

    Returns:
        The names of the topics created by this call.
    """
    from kafka import KafkaAdminClient
    from kafka.admin import ConfigResource, ConfigResourceType, NewPartitions, NewTopic

    settings = _settings(settings)
    declared = settings.kafka.topics
    admin = KafkaAdminClient(
        bootstrap_servers=settings.kafka.bootstrap_servers, client_id="feedrank-topics"
    )
    try:
        existing = topic_partition_counts(admin)
        missing = [
            NewTopic(
                name,
                num_partitions=topic.partitions,
                replication_factor=1,
                topic_configs={
                    "retention.ms": str(topic.retention_ms),
                    "max.message.bytes": str(topic.max_message_bytes),
                },
            )
            for name, topic in declared.items()
            if name not in existing
        ]
        if missing:
            create_topics(admin, missing)
            log.info("created topics %s", sorted(t.name for t in missing))
        present = [name for name in declared if name in existing]
        if present:
            admin.alter_configs(
                [
                    ConfigResource(
                        ConfigResourceType.TOPIC,
                        name,
                        configs={
                            "retention.ms": str(declared[name].retention_ms),
                            "max.message.bytes": str(declared[name].max_message_bytes),
                        },
                    )
                    for name in present
                ]
            )
        grow = {n: declared[n].partitions for n in present if existing[n] < declared[n].partitions}
        if grow:
            admin.create_partitions({n: NewPartitions(count) for n, count in grow.items()})
            log.info("grew partitions of %s", grow)
        for name in present:
            if existing[name] > declared[name].partitions:
                log.warning(
                    "topic %s has %d partitions, config declares %d (Kafka cannot shrink)",
                    name, existing[name], declared[name].partitions,
                )  # fmt: skip
        return sorted(t.name for t in missing)
    finally:
        admin.close()


def kafka_up(settings: Settings | None = None) -> bool:
    """Start the local KRaft broker unless it runs, wait until ready, provision topics.

    Returns:
        True if this call started the broker; False if it was already running and ready.

    Raises:
        FeedrankError: the broker exited or did not become ready in
            ``kafka.ready_timeout_s`` (the message carries the end of its log).
    """
    settings = _settings(settings)
    with _lock(settings, "kafka"):
        config = _kafka_config(settings)
        pid = _owned_pid(settings, "kafka", str(config))
        timeout_s = settings.kafka.ready_timeout_s
        if pid is not None:
            if kafka_ready(settings, timeout_s):
                ensure_topics(settings)
                return False
            log.warning("kafka pid %s never became ready; restarting it", pid)
            _terminate(settings, "kafka", pid)
        elif kafka_ready(settings):
            # Someone else's broker on our port (another run folder): use it, never stop it.
            log.warning(
                "a broker not started from %s answers on %s; using it",
                settings.paths.home,
                settings.kafka.bootstrap_servers,
            )
            ensure_topics(settings)
            return False
        _require_free_ports(
            "Kafka", settings.kafka.host, settings.kafka.port, settings.kafka.controller_port
        )
        config, log4j = _prepare_kafka(settings)
        _say(f"starting Kafka {settings.kafka.version} on {settings.kafka.bootstrap_servers}")
        started = time.monotonic()
        argv = [
            _java(), "-Xms256m", "-Xmx1g", "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={log4j}",
            f"-Dkafka.logs.dir={settings.paths.logs}",
            "-cp", f"{kafka_jars_dir(settings)}/*", _KAFKA_MAIN, str(config),
        ]  # fmt: skip
        pid = _spawn(settings, "kafka", argv, output="kafka.out")
        deadline = started + timeout_s
        while not kafka_ready(settings, min(1.0, max(deadline - time.monotonic(), 0.0))):
            if not _is_running(pid):
                _pid_file(settings, "kafka").unlink(missing_ok=True)
                raise FeedrankError(
                    f"Kafka exited during start-up; see {settings.paths.logs / 'kafka.log'}:\n"
                    + _log_tail(settings.paths.logs / "kafka.out")
                )
            if time.monotonic() >= deadline:
                _terminate(settings, "kafka", pid)
                raise FeedrankError(
                    f"Kafka not ready after {timeout_s:.0f} s; see "
                    f"{settings.paths.logs / 'kafka.log'}"
                )
        _say(f"Kafka ready in {time.monotonic() - started:.1f} s (pid {pid})")
        created = ensure_topics(settings)
        if created:
            _say(f"created {len(created)} topics")
        return True


def kafka_down(settings: Settings | None = None) -> bool:
    """Stop the broker started from this run folder and wait for it to exit.

    Returns:
        True if a broker was stopped; False if none of ours was running.
    """
    settings = _settings(settings)
    with _lock(settings, "kafka"):
        pid = _owned_pid(settings, "kafka", str(_kafka_config(settings)))
        if pid is None:
            return False
        _terminate(settings, "kafka", pid)
        return True


# --------------------------------------------------------------------------- redis


def _redis_binary() -> str:
    """Path of ``redis-server``; installs Debian's package first when it is missing."""
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise FeedrankError("redis-server not found: install it (apt-get install -y redis-server)")
    _say("redis-server not installed; installing Debian's package with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update"], ["apt-get", "install", "-y", "redis-server"]):
        if subprocess.run(argv, env=env, check=False).returncode != 0:
            raise FeedrankError(f"{shlex.join(argv)} failed")
    return _redis_binary()


def _redis_dir(settings: Settings) -> Path:
    return settings.paths.home / "redis"


def redis_up(settings: Settings | None = None) -> bool:
    """Start ``redis-server`` on 127.0.0.1 (data and log in the run folder) unless it runs.

    Returns:
        True if this call started it; False if it was already running and answering.
    """
    settings = _settings(settings)
    with _lock(settings, "redis"):
        data_dir = _redis_dir(settings)
        pid = _owned_pid(settings, "redis", str(data_dir))
        if pid is not None and redis_ready(settings, 10.0):
            return False
        if pid is not None:
            _terminate(settings, "redis", pid)
        elif redis_ready(settings):
            log.warning(
                "a redis-server not started from %s answers on %s; using it",
                settings.paths.home,
                settings.redis.url,
            )
            return False
        _require_free_ports("redis-server", settings.redis.host, settings.redis.port)
        binary = _redis_binary()
        data_dir.mkdir(parents=True, exist_ok=True)
        settings.paths.logs.mkdir(parents=True, exist_ok=True)
        argv = [
            binary, "--bind", settings.redis.host, "--port", str(settings.redis.port),
            "--dir", str(data_dir), "--logfile", str(settings.paths.logs / "redis.log"),
            "--daemonize", "no", "--protected-mode", "yes", "--save", "60 1",
            "--dbfilename", "dump.rdb",
        ]  # fmt: skip
        _say(f"starting redis-server on {settings.redis.url}")
        pid = _spawn(settings, "redis", argv, output="redis.out")
        if not redis_ready(settings, 15.0):
            alive = _is_running(pid)
            if alive:
                _terminate(settings, "redis", pid)
            raise FeedrankError(
                f"redis-server did not answer PING; see {settings.paths.logs / 'redis.log'}:\n"
                + _log_tail(settings.paths.logs / "redis.log")
            )
        return True


def redis_down(settings: Settings | None = None) -> bool:
    """Stop our redis-server (it saves its data on SIGTERM). True if one was stopped."""
    settings = _settings(settings)
    with _lock(settings, "redis"):
        pid = _owned_pid(settings, "redis", str(_redis_dir(settings)))
        if pid is None:
            return False
        _terminate(settings, "redis", pid)
        return True


# --------------------------------------------------------------------------- spark cluster


def _spark_dir(settings: Settings) -> Path:
    return settings.paths.home / "spark-cluster"


def _spark_properties(settings: Settings) -> Path:
    """Per-run-folder properties file; its path also marks the processes as ours."""
    path = _spark_dir(settings) / "spark-defaults.conf"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "spark.master.rest.enabled false\n"
        f"spark.worker.cleanup.enabled true\n"
        f"spark.local.dir {_spark_dir(settings) / 'local'}\n"
    )
    return path


def spark_master_url(settings: Settings | None = None) -> str:
    """``spark://127.0.0.1:<spark.master_port>`` of the local standalone master."""
    return f"spark://127.0.0.1:{_settings(settings).spark.master_port}"


def _spark_alive_workers(settings: Settings) -> int | None:
    """Alive workers the master reports on its JSON endpoint; None if it does not answer."""
    url = f"http://127.0.0.1:{settings.spark.master_webui_port}/json/"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(json.load(response).get("aliveworkers", 0))
    except (OSError, ValueError):
        return None


def spark_cluster_ready(settings: Settings | None = None, timeout_s: float = 0.0) -> bool:
    """True once the master reports ``spark.cluster_workers`` alive workers."""
    settings = _settings(settings)
    deadline = time.monotonic() + timeout_s
    while True:
        alive = _spark_alive_workers(settings)
        if alive is not None and alive >= settings.spark.cluster_workers:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.5)


def _spark_processes(settings: Settings) -> list[str]:
    return ["spark-master"] + [
        f"spark-worker-{i}" for i in range(1, settings.spark.cluster_workers + 1)
    ]


def spark_cluster_up(settings: Settings | None = None) -> bool:
    """Start a standalone master and ``spark.cluster_workers`` workers on 127.0.0.1.

    Returns:
        True if this call started any process; False if the whole cluster already ran.
    """
    settings = _settings(settings)
    spark_class = str(Path(sys.executable).parent / "spark-class")
    with _lock(settings, "spark-cluster"):
        props = _spark_properties(settings)
        marker = str(props)
        env = {
            "SPARK_LOCAL_IP": "127.0.0.1",
            "SPARK_LOG_DIR": str(settings.paths.logs),
            "PYSPARK_PYTHON": sys.executable,
            "SPARK_NO_DAEMONIZE": "1",
        }
        started_any = False
        if _owned_pid(settings, "spark-master", marker) is None:
            _require_free_ports(
                "the Spark master",
                "127.0.0.1",
                settings.spark.master_port,
                settings.spark.master_webui_port,
            )
            _say(f"starting Spark master on {spark_master_url(settings)}")
            argv = [
                spark_class, "org.apache.spark.deploy.master.Master",
                "--host", "127.0.0.1", "--port", str(settings.spark.master_port),
                "--webui-port", str(settings.spark.master_webui_port),
                "--properties-file", marker,
            ]  # fmt: skip
            _spawn(settings, "spark-master", argv, env)
            started_any = True
        for i, name in enumerate(_spark_processes(settings)[1:], start=1):
            if _owned_pid(settings, name, marker) is not None:
                continue
            work_dir = _spark_dir(settings) / f"work-{i}"
            work_dir.mkdir(parents=True, exist_ok=True)
            _say(f"starting {name}")
            argv = [
                spark_class, "org.apache.spark.deploy.worker.Worker",
                "--host", "127.0.0.1", "--cores", str(settings.spark.worker_cores),
                "--memory", settings.spark.worker_memory, "--work-dir", str(work_dir),
                # 0 = any free port: fixed worker UI ports collide between run folders.
                "--webui-port", "0", "--properties-file", marker,
                spark_master_url(settings),
            ]  # fmt: skip
            _spawn(settings, name, argv, env)
            started_any = True
        # Workers register within seconds on an idle machine; minutes on a saturated one.
        if not spark_cluster_ready(settings, 180.0):
            raise FeedrankError(
                f"Spark cluster did not report {settings.spark.cluster_workers} workers; see "
                f"{settings.paths.logs}/spark-*.log"
            )
        if started_any:
            _say(f"Spark cluster ready: {spark_master_url(settings)}")
        return started_any


def spark_cluster_down(settings: Settings | None = None) -> bool:
    """Stop the workers, then the master. True if any process was stopped."""
    settings = _settings(settings)
    marker = str(_spark_dir(settings) / "spark-defaults.conf")
    stopped = False
    with _lock(settings, "spark-cluster"):
        for name in reversed(_spark_processes(settings)):
            pid = _owned_pid(settings, name, marker)
            if pid is not None:
                _terminate(settings, name, pid)
                stopped = True
    return stopped


# --------------------------------------------------------------------------- airflow


def airflow_env(settings: Settings | None = None) -> dict[str, str]:
    """Environment every Airflow command of this run folder needs (Makefile, tests, demo).

    AIRFLOW_HOME and the SQLite metadata DB live in ``<paths.home>/airflow``; DAGs come from
    the repository's ``dags/``; examples are off. Airflow reads these at import time, so set
    them before ``import airflow``.
    """
    settings = _settings(settings)
    home = settings.paths.home / "airflow"
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(settings.paths.logs / "airflow"),
        "AIRFLOW__API__PORT": str(settings.airflow.port),
    }


def airflow_migrate(settings: Settings | None = None, force: bool = False) -> bool:
    """Run ``airflow db migrate`` for this run folder once per Airflow version.

    Returns:
        True if the migration ran; False if the stamp says this DB is already migrated.
    """
    settings = _settings(settings)
    env = airflow_env(settings)
    home = Path(env["AIRFLOW_HOME"])
    version = importlib.metadata.version("apache-airflow")
    stamp = home / ".migrated"
    if not force and stamp.is_file() and stamp.read_text().strip() == version:
        return False
    home.mkdir(parents=True, exist_ok=True)
    _say(f"airflow db migrate (Airflow {version}, AIRFLOW_HOME={home})")
    airflow = str(Path(sys.executable).parent / "airflow")
    result = subprocess.run([airflow, "db", "migrate"], env={**os.environ, **env}, check=False)
    if result.returncode != 0:
        raise FeedrankError(f"airflow db migrate failed ({result.returncode})")
    stamp.write_text(version + "\n")
    return True


# --------------------------------------------------------------------------- airflow standalone


def _airflow_pid(settings: Settings) -> int | None:
    """The live pid of this run folder's ``airflow standalone`` (its AIRFLOW_HOME), or None."""
    home = airflow_env(settings)["AIRFLOW_HOME"]
    pid = _owned_pid(settings, "airflow", "standalone")
    if pid is None:
        return None
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        environ = []
    if f"AIRFLOW_HOME={home}".encode() in environ:
        return pid
    _pid_file(settings, "airflow").unlink(missing_ok=True)
    return None


def airflow_url(settings: Settings | None = None) -> str:
    """Address of the Airflow UI / API server of ``airflow_up`` (loopback only)."""
    return f"http://127.0.0.1:{_settings(settings).airflow.port}"


def airflow_password_file(settings: Settings | None = None) -> Path:
    """Where the simple auth manager writes the generated ``admin`` password."""
    home = Path(airflow_env(settings)["AIRFLOW_HOME"])
    return home / "simple_auth_manager_passwords.json.generated"


def airflow_ready(settings: Settings | None = None, timeout_s: float = 0.0) -> bool:
    """True once the API server answers and reports a healthy scheduler and dag processor."""
    url = f"{airflow_url(settings)}/api/v2/monitor/health"
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                health = json.loads(response.read())
            if all(
                (health.get(part) or {}).get("status") == "healthy"
                for part in ("metadatabase", "scheduler", "dag_processor")
            ):
                return True
        except (OSError, ValueError) as exc:
            log.debug("airflow not ready: %s", exc)
        if time.monotonic() >= deadline:
            return False
        time.sleep(1.0)


def airflow_up(settings: Settings | None = None, timeout_s: float = 300.0) -> bool:
    """Start ``airflow standalone`` (scheduler, dag processor, triggerer, API server + UI).

    Binds the API server to 127.0.0.1:``airflow.port``, uses this run folder's AIRFLOW_HOME
    and the repository's dags/; output goes to ``logs/airflow.log``. The ``admin`` password is
    generated into :func:`airflow_password_file` on first start.

    Returns:
        True if started, False if it was already running.

    Raises:
        FeedrankError: it did not become healthy within ``timeout_s``.
    """
    settings = _settings(settings)
    with _lock(settings, "airflow"):
        if _airflow_pid(settings):
            return False
        airflow_migrate(settings)
        env = {
            **airflow_env(settings),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__BASE_URL": airflow_url(settings),
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            # standalone starts its components as `airflow` from PATH: use this venv's.
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        airflow = str(Path(sys.executable).parent / "airflow")
        pid = _spawn(settings, "airflow", [airflow, "standalone"], env)
        _say(f"airflow standalone starting (pid {pid}), waiting for {airflow_url(settings)}")
        if not airflow_ready(settings, timeout_s=timeout_s):
            _terminate(settings, "airflow", pid)
            tail = _log_tail(settings.paths.logs / "airflow.log")
            raise FeedrankError(f"airflow did not become healthy in {timeout_s:.0f} s:\n{tail}")
    return True


def _group_members(pgid: int) -> list[int]:
    """Live processes of process group ``pgid``."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def airflow_down(settings: Settings | None = None) -> bool:
    """Stop this run folder's ``airflow standalone`` and its components; no-op if not running.

    The components (scheduler, dag processor, triggerer, API server) share standalone's process
    group; they get SIGTERM with it and are waited for, then SIGKILLed after the stop timeout.
    """
    settings = _settings(settings)
    with _lock(settings, "airflow"):
        pid = _airflow_pid(settings)
        if pid is None:
            return False
        _terminate(settings, "airflow", pid)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while _group_members(pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        if _group_members(pid):
            log.warning("airflow components ignored SIGTERM for %.0f s; killing", STOP_TIMEOUT_S)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
    return True


# --------------------------------------------------------------------------- status + CLI


def status(settings: Settings | None = None) -> dict[str, dict[str, object]]:
    """Each service's pid (ours, or None) and whether it answers now."""
    settings = _settings(settings)
    spark_marker = str(_spark_dir(settings) / "spark-defaults.conf")
    report: dict[str, dict[str, object]] = {
        "kafka": {
            "pid": _owned_pid(settings, "kafka", str(_kafka_config(settings))),
            "ready": kafka_ready(settings),
            "endpoint": settings.kafka.bootstrap_servers,
        },
        "redis": {
            "pid": _owned_pid(settings, "redis", str(_redis_dir(settings))),
            "ready": redis_ready(settings),
            "endpoint": settings.redis.url,
        },
    }
    alive = _spark_alive_workers(settings)
    for name in _spark_processes(settings):
        report[name] = {
            "pid": _owned_pid(settings, name, spark_marker),
            "ready": alive is not None and (name == "spark-master" or alive > 0),
            "endpoint": spark_master_url(settings) if name == "spark-master" else "",
        }
    return report


def profile_services(settings: Settings | None = None) -> tuple[str, ...]:
    """Services the profile needs: Kafka always, Redis for redis/cluster, Spark for cluster."""
    profile = _settings(settings).profile
    return {
        "local": ("kafka",),
        "redis": ("kafka", "redis"),
        "cluster": ("kafka", "redis", "spark-cluster"),
    }[profile]


app = typer.Typer(
    help="Start/stop feedrank's local services (Kafka, Redis, Spark standalone cluster).",
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
    starters = {"kafka": kafka_up, "redis": redis_up, "spark-cluster": spark_cluster_up}
    for name in ("kafka", "redis", "spark-cluster"):
        if name in wanted:
            started = starters[name](settings)
            _say(f"{name}: {'started' if started else 'already running'}")


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
    for name, flag, stop in (
        ("spark-cluster", spark_cluster, spark_cluster_down),
        ("redis", redis, redis_down),
        ("kafka", kafka, kafka_down),
    ):
        if flag:
            _say(f"{name}: {'stopped' if stop(settings) else 'not running'}")


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
    _say(f"airflow: {'started' if started else 'already running'}")
    typer.echo(f"Airflow UI: {airflow_url(settings)}  (user admin)")
    typer.echo(f"admin password: in {airflow_password_file(settings)}")
    typer.echo(f"log: {settings.paths.logs / 'airflow.log'}; stop with: make down")


@app.command("airflow-down")
def _cli_airflow_down() -> None:
    """Stop this run folder's ``airflow standalone``; no-op if it is not running."""
    _say(f"airflow: {'stopped' if airflow_down(get_settings()) else 'not running'}")


if __name__ == "__main__":
    from feedrank.errors import run_cli
    from feedrank.logs import setup_logging

    setup_logging("services")
    run_cli(app, prog_name="python -m feedrank.services")
