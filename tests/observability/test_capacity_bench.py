"""``feedrank bench capacity``: unit costs on the real broker, and the plan's arithmetic."""

from __future__ import annotations

import json

import pytest

from feedrank.capacity_bench import capacity_plan, kafka_bench, request_messages
from feedrank.config import Settings
from feedrank.schemas import FeedRequest, RankedFeed, ServedImpressions


@pytest.mark.unit
def test_request_messages_are_what_serving_sends() -> None:
    messages = request_messages(candidates=300, feed_size=20, sampled=3)
    request = FeedRequest.model_validate_json(messages["feed_requests"])
    feed = RankedFeed.model_validate_json(messages["ranked_feeds"])
    served = ServedImpressions.model_validate_json(messages["impressions"])
    assert len(request.candidate_tweet_ids) == 300 and len(feed.items) == 20
    assert sum(i.features is not None for i in served.impressions) == 3
    bigger = request_messages(candidates=600, feed_size=20, sampled=3)
    assert len(bigger["feed_requests"]) > 1.8 * len(messages["feed_requests"])


@pytest.mark.integration
def test_kafka_bench_reads_back_every_byte_it_wrote(kafka: Settings) -> None:
    messages = request_messages(candidates=200, feed_size=10, sampled=2)
    result = kafka_bench(kafka, 50, messages)
    assert result["mb"] == pytest.approx(50 * sum(map(len, messages.values())) / 1e6)
    assert result["produce_mb_s"] > 0 and result["consume_mb_s"] > 0
    # The broker was started by this test session, so its CPU is read from /proc.
    assert result["broker_in_cpu_s_per_mb"] is not None
    assert result["producer_cpu_s_per_mb"] > 0
    json.dumps(result)


@pytest.mark.unit
def test_plan_scales_with_the_load() -> None:
    base = dict(
        rankings_per_day=86_400 * 100.0,  # 100 requests/s on average
        peak_factor=2.0,
        serve_cpu_ms_per_request=30.0,
        bytes_per_request=40_000.0,
        broker_cpu_s_per_mb=0.05,
        bytes_per_entity={"user": 500.0, "tweet": 400.0},
        entities={"user": 1e6, "tweet": 2e6},
        spark_rows_per_core_s=1e5,
        training_rows_per_day=3.6e8,
        core_utilisation=0.5,
    )
    plan = capacity_plan(**base)
    assert plan["average_rps"] == pytest.approx(100) and plan["peak_rps"] == pytest.approx(200)
    # 200 req/s × 30 ms = 6 busy cores, planned at half a core each
    assert plan["serve_cores_at_peak"] == pytest.approx(12)
    assert plan["kafka_mb_s_at_peak"] == pytest.approx(8)
    assert plan["redis_gb"] == pytest.approx((500 * 1e6 + 400 * 2e6) / 1e9)
    assert plan["nightly_training_data_core_hours"] == pytest.approx(1.0)
    doubled = capacity_plan(**{**base, "rankings_per_day": base["rankings_per_day"] * 2})
    assert doubled["serve_cores_at_peak"] == pytest.approx(2 * plan["serve_cores_at_peak"])
    assert doubled["redis_gb"] == plan["redis_gb"]  # memory follows entities, not requests
