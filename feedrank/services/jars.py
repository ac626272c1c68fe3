"""The jars Maven fetches once into .cache/: the Kafka broker and the Spark Kafka connector."""

from __future__ import annotations

import hashlib
import importlib.metadata
import shutil
import subprocess
from pathlib import Path

from feedrank.config import Settings
from feedrank.errors import FeedrankError
from feedrank.services.process import (
    INFRA,
    file_lock,
    resolve,
    say,
)

KAFKA_POM = INFRA / "kafka" / "pom.xml"


def kafka_jars_dir(settings: Settings | None = None) -> Path:
    """Folder of the Kafka broker's jars (``make setup`` / :func:`fetch_jars` fill it)."""
    return resolve(settings).paths.cache / "kafka-jars"


def spark_jars_dir(settings: Settings | None = None) -> Path:
    """Folder of the spark-sql-kafka connector jars that ``feedrank.spark`` passes to Spark."""
    return resolve(settings).paths.cache / "spark-jars"


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
    settings = resolve(settings)
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
        with file_lock(cache / "jars.lock"):
            if not force and stamp.is_file() and stamp.read_text().strip() == stamp_text:
                continue  # another process fetched them while we waited
            mvn = shutil.which("mvn")
            if mvn is None:
                raise FeedrankError("mvn not found: install Maven (apt-get install -y maven)")
            staging = cache / f".staging-{profile}"
            shutil.rmtree(staging, ignore_errors=True)
            say(f"fetching {what} jars from Maven Central into {folder}")
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
