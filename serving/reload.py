"""Hot model reload: watch the champion pointer, load the new model beside the old, swap.

Loading (reading, checksumming and parsing five boosters) happens on a background thread so
requests keep being answered by the old model meanwhile; the consumer loop calls
:meth:`ModelWatcher.maybe_swap` between requests, which is the only place the serving model
changes. A version that fails :func:`feedrank.registry.load_model` (corrupted file,
checksum or contract mismatch) is refused once — logged and counted — and the old model
keeps serving until the pointer names another version.
"""

from __future__ import annotations

import logging
import threading
import time

from feedrank.config import Settings
from feedrank.errors import FeedrankError
from feedrank.registry import LoadedModel, champion_version
from serving import metrics
from serving.scorer import ModelSlot, load_serving_model

log = logging.getLogger("feedrank.serving")


class ModelWatcher:
    """Polls the champion pointer every ``interval_s`` and stages verified models."""

    def __init__(self, settings: Settings, slot: ModelSlot, interval_s: float = 1.0) -> None:
        self.settings = settings
        self.slot = slot
        self.interval_s = interval_s
        self.refused: dict[str, str] = {}  # version -> reason
        self._staged: LoadedModel | None = None
        self._loading: str | None = None
        self._lock = threading.Lock()
        self._next_check_s = 0.0

    def maybe_swap(self) -> str | None:
        """Between requests: start a load if the champion moved; swap in a staged model.

        Returns:
            The version swapped in, or ``None``.
        """
        now = time.monotonic()
        if now >= self._next_check_s:
            self._next_check_s = now + self.interval_s
            self._check_pointer()
        with self._lock:
            staged, self._staged = self._staged, None
        if staged is None:
            return None
        old = self.slot.swap(staged)
        metrics.MODEL_RELOADS.labels(outcome="loaded").inc()
        log.info("model swapped: %s -> %s", old.version if old else None, staged.version)
        return staged.version

    def _check_pointer(self) -> None:
        try:
            version = champion_version(self.settings)
        except FeedrankError as exc:
            self._refuse("champion.json", str(exc))
            return
        current = self.slot.version
        if version is None or version == current or version in self.refused:
            return
        with self._lock:
            if self._loading is not None or (self._staged and self._staged.version == version):
                return
            self._loading = version
        threading.Thread(
            target=self._load, args=(version,), name=f"load-{version}", daemon=True
        ).start()

    def _load(self, version: str) -> None:
        try:
            model = load_serving_model(version, self.settings)
        except Exception as exc:  # any failure to load means: refuse, keep the old model
            self._refuse(version, str(exc).strip().splitlines()[0] if str(exc) else repr(exc))
            model = None
        with self._lock:
            self._loading = None
            if model is not None:
                self._staged = model

    def _refuse(self, version: str, reason: str) -> None:
        if self.refused.get(version) == reason:
            return
        self.refused[version] = reason
        metrics.MODEL_RELOADS.labels(outcome="refused").inc()
        log.error("refused model %s, still serving %s: %s", version, self.slot.version, reason)
