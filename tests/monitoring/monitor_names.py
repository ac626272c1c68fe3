"""The monitoring tests' shared names (a unique module name: see tests/features/feast_world)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from feedrank.config import Settings

START = dt.date(2026, 11, 1)
DAY = dt.date(2026, 11, 2)  # the monitored (served) day
MODEL_VERSION = "v-monitor-test"


@dataclass
class MonitorWorld:
    settings: Settings
    world: dict[str, list[dict]]
    served: list[dict]  # DAY's impressions with the reference vectors as ``features``
