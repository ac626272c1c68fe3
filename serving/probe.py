"""Readiness probe of a ``feedrank serve`` process: ready once the group assigned it partitions.

    python -m serving.probe --port 19100

Reads the process's own ``/metrics`` and exits 0 when the assigned-partitions gauge is above
zero, 1 with one line otherwise (not answering, or no partitions yet: a rebalance, or more
members than partitions). Kubernetes uses it as the serve pod's readiness probe.
"""

from __future__ import annotations

import argparse
import sys
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

GAUGE = "feedrank_serving_assigned_partitions"


def assigned_partitions(host: str, port: int, timeout_s: float = 2.0) -> float:
    """Sum of the assigned-partitions gauge on ``http://host:port/metrics``."""
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=timeout_s) as reply:
        text = reply.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == GAUGE
        for sample in family.samples
    )


def main(argv: list[str] | None = None) -> int:
    """Exit status of the probe: 0 ready, 1 not ready."""
    parser = argparse.ArgumentParser(prog="python -m serving.probe", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    try:
        partitions = assigned_partitions(args.host, args.port)
    except OSError as exc:
        print(f"not ready: /metrics on {args.host}:{args.port} does not answer ({exc})")
        return 1
    if partitions <= 0:
        print("not ready: no partitions assigned")
        return 1
    print(f"ready: {partitions:g} partition(s) assigned")
    return 0


if __name__ == "__main__":
    sys.exit(main())
