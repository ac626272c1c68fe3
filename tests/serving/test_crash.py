"""kill -9 of a ``feedrank serve`` process mid-stream, then a restart: nothing is lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from serving_helpers import TopicReader, fresh_group, make_request, send_requests

from feedrank.config import Settings
from feedrank.schemas import RankedFeed
from serving.consumer import MAX_UNSETTLED_RECORDS

pytestmark = pytest.mark.integration

N_REQUESTS = 5_000


def start_serve(settings: Settings, log_path: Path) -> subprocess.Popen:
    """``feedrank serve`` as its own process, configured through the environment."""
    env = {
        **os.environ,
        "FEEDRANK_PATHS__HOME": str(settings.paths.home),
        "FEEDRANK_KAFKA__HOST": settings.kafka.host,
        "FEEDRANK_KAFKA__PORT": str(settings.kafka.port),
        "FEEDRANK_SERVING__GROUP_ID": settings.serving.group_id,
        "FEEDRANK_SERVING__METRICS_PORT": "0",
    }
    command = [str(Path(sys.executable).parent / "feedrank"), "serve"]
    with log_path.open("ab") as log:
        return subprocess.Popen(command, env=env, stdout=log, stderr=log)


# Two cold starts of `feedrank serve` (Feast + XGBoost imports) dominate; on a busy 2-core
# machine each took up to two minutes.
@pytest.mark.timeout(900)
def test_kill_9_mid_stream_then_restart_loses_nothing(
    kafka: Settings,
    serve_settings: Settings,
    champion: str,
    feast_world: Settings,
    producer,
    tmp_path: Path,
) -> None:
    settings = fresh_group(serve_settings.model_copy(update={"kafka": kafka.kafka}))
    log_path = tmp_path / "serve.out"
    # Small requests (3 candidates) so the whole run stays short on two cores.
    requests = [
        make_request(i % 200, [(3 * i + k) % 2_000 for k in range(3)]) for i in range(N_REQUESTS)
    ]
    ids = {r.request_id for r in requests}
    reader = TopicReader(settings, "ranked_feeds")
    dlq = TopicReader(settings, "feed_requests.dlq")
    first = start_serve(settings, log_path)
    second: subprocess.Popen | None = None
    values: list[bytes] = []
    try:
        send_requests(producer, requests)
        deadline = time.monotonic() + 400
        while len(values) < 1_500:
            assert first.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            values += reader.read(1_500, 2, accept=lambda v: json.loads(v)["request_id"] in ids)
        first.send_signal(signal.SIGKILL)
        assert first.wait(timeout=30) == -signal.SIGKILL
        second = start_serve(settings, log_path)
        deadline = time.monotonic() + 400
        while len({json.loads(v)["request_id"] for v in values}) < N_REQUESTS:
            assert second.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            values += reader.read(
                N_REQUESTS, 5, accept=lambda v: json.loads(v)["request_id"] in ids
            )
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=60) == 0, log_path.read_text()[-3000:]
        letters = dlq.read(1, 2)
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
        reader.close()
        dlq.close()
    answered = Counter(json.loads(v)["request_id"] for v in values)
    assert set(answered) == ids  # 0 lost
    assert not letters
    duplicates = sum(answered.values()) - len(answered)
    # Only the messages answered but unsettled at the kill were uncommitted.
    assert duplicates <= MAX_UNSETTLED_RECORDS, duplicates
    feeds: dict[str, list[RankedFeed]] = {}
    for value in values:
        feed = RankedFeed.model_validate_json(value)
        feeds.setdefault(feed.request_id, []).append(feed)
    for copies in feeds.values():
        assert all(copy.items == copies[0].items for copy in copies)
