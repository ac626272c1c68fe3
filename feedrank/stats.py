"""Summary statistics shared by the benchmarks, the demo and the reports (one definition)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0–100, linear interpolation) of ``values``; NaN when empty."""
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else float("nan")


def p50_p99(values: Sequence[float]) -> tuple[float, float]:
    """Median and 99th percentile of ``values`` (NaN, NaN when empty)."""
    return percentile(values, 50), percentile(values, 99)
