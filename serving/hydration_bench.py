"""``feedrank bench hydration``: Feast SQLite, Feast Redis and the fast path, timed on one store.

A benchmark, so it sits at the top layer: it starts redis-server through service control.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from feedrank import feature_spec as spec
from feedrank.config import Settings
from feedrank.stats import p50_p99
from serving.hydration import FeatureHydrator, online_features_matrix


def _time_calls(fn: Callable[[int], Any], n: int) -> list[float]:
    samples = []
    for i in range(n):
        started = time.perf_counter()
        fn(i)
        samples.append(1e3 * (time.perf_counter() - started))
    return samples


def run_bench(
    settings: Settings,
    *,
    candidates: int = 1000,
    requests: int = 200,
    feast_requests: int = 10,
    json_path: Path | None = None,
) -> dict[str, float | int | str]:
    """Time Feast SQLite, Feast Redis and the fast path on the same synthetic store.

    Builds its own store under ``<paths.home>/bench/hydration`` (synthetic feature tables
    generated from the spec, sized for ``candidates``), applies and materializes it into
    SQLite and into Redis (starting redis-server when none answers); checks that the
    fast path equals Feast before timing; prints one table and optionally writes JSON.
    """
    import datetime as dt

    from rich.console import Console
    from rich.table import Table

    from feedrank.config import FeastConfig, PathsConfig
    from feedrank.services import redis_down, redis_up
    from feedrank.synthetic_features import build_synthetic_store

    console = Console(stderr=True)
    home = settings.paths.home / "bench" / "hydration"
    base = settings.model_copy(update={"paths": PathsConfig(home=home)})
    users, authors, tweets = 300, max(50, candidates // 10), max(3 * candidates, 3000)
    rng = np.random.default_rng(3)
    requests_list = [
        (
            int(rng.integers(0, users)),
            rng.choice(tweets + candidates // 20, size=candidates, replace=False).tolist(),
        )
        for _ in range(max(requests, feast_requests))
    ]
    result: dict[str, float | int | str] = {
        "candidates": candidates,
        "features": len(spec.model_features()),
    }
    table = Table(
        title=f"hydration, {candidates} candidates × {len(spec.model_features())} features (ms)"
    )
    for column in ("path", "requests", "p50", "p99"):
        table.add_column(column, justify="right" if column != "path" else "left")
    stores = {
        "sqlite": base,
        "redis": base.model_copy(update={"feast": FeastConfig(online_store="redis")}),
    }
    # The Redis rows need a redis-server: the profile's one if it runs, else one started
    # here (data and log under the run folder) and stopped at the end.
    started_redis = redis_up(settings)
    try:
        for online, store_settings in stores.items():
            with console.status(f"synthetic tables, apply + materialize ({online})"):
                materialized_to = build_synthetic_store(
                    store_settings,
                    start=dt.date(2026, 11, 1),
                    users=users,
                    authors=authors,
                    tweets=tweets,
                )
            request_ts = materialized_to.timestamp()
            hydrator = FeatureHydrator(store_settings)
            user0, tweets0 = requests_list[0]
            reference = online_features_matrix(hydrator.store, user0, tweets0, request_ts, "web")
            fast = hydrator.hydrate(user0, tweets0, request_ts, "web")
            if not np.allclose(reference, fast, rtol=0, atol=1e-9, equal_nan=True):
                raise RuntimeError(f"fast path differs from get_online_features on {online}")
            with console.status(f"timing get_online_features ({online})"):
                feast_ms = _time_calls(
                    lambda i, h=hydrator, ts=request_ts: online_features_matrix(
                        h.store, *requests_list[i], ts, "web"
                    ),
                    feast_requests,
                )
            p50, p99 = p50_p99(feast_ms)
            result[f"feast_{online}_p50_ms"], result[f"feast_{online}_p99_ms"] = p50, p99
            table.add_row(
                f"Feast get_online_features, {online}",
                str(feast_requests),
                f"{p50:.1f}",
                f"{p99:.1f}",
            )
            with console.status(f"timing the fast path ({online})"):
                hydrator.hydrate(*requests_list[0], request_ts, "web")  # warm-up
                fast_ms = _time_calls(
                    lambda i, h=hydrator, ts=request_ts: h.hydrate(*requests_list[i], ts, "web"),
                    requests,
                )
            p50, p99 = p50_p99(fast_ms)
            prefix = "fast" if online == "sqlite" else f"fast_{online}"
            result[f"{prefix}_p50_ms"], result[f"{prefix}_p99_ms"] = p50, p99
            result[f"{prefix}_stream_reads"] = hydrator.stream_reads
            table.add_row(
                f"fast path, {online} (stream views: {hydrator.stream_reads})",
                str(requests),
                f"{p50:.2f}",
                f"{p99:.2f}",
            )
            hydrator.close()
    finally:
        if started_redis:
            redis_down(settings)
    Console().print(table)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=2) + "\n")
    return result
