"""Hot model reload: follow the MLflow ``champion`` alias, load the new model beside the old, swap.

Asking the tracking store which version the alias names and loading that version (reading,
checksumming and parsing five boosters) both happen on a background thread, so requests keep
being answered by the old model meanwhile and a slow or unreachable store never delays one;
the consumer loop calls :meth:`ModelWatcher.maybe_swap` between requests, which is the only
place the serving model changes. While the store does not answer, the current model keeps
serving (logged once). A version that fails :func:`feedrank.model_files.load_model`
(corrupted file, checksum or feature-contract mismatch) is refused once — logged and counted —
and the old model keeps serving until the alias names another version.
"""

from __future__ import annotations

import logging
import threading
import time

from feedrank.config import Settings
from feedrank.model import LoadedModel
from feedrank.tracking import TrackingUnavailable, champion_version
from serving import metrics
from serving.scorer import ModelSlot, load_serving_model

log = logging.getLogger("feedrank.serving")


class ModelWatcher:
    """Asks every ``interval_s`` which version ``champion`` names and stages verified models."""

    def __init__(self, settings: Settings, slot: ModelSlot, interval_s: float = 1.0) -> None:
        self.settings = settings
        self.slot = slot
        self.interval_s = interval_s
        self.refused: dict[str, str] = {}  # version -> reason
        self.store_error: str | None = None  # set while the tracking store does not answer
        self.checks = 0  # completed checks (answered or not)
        self._staged: LoadedModel | None = None
        self._checking = False
        self._lock = threading.Lock()
        self._next_check_s = 0.0

    def maybe_swap(self) -> str | None:
        """Between requests: start a check if one is due; swap in a staged model.

        Returns:
            The version swapped in, or ``None``.
        """
        now = time.monotonic()
        if now >= self._next_check_s:
            self._next_check_s = now + self.interval_s
            with self._lock:
                start, self._checking = not self._checking, True
            if start:
                threading.Thread(target=self._check, name="champion-watch", daemon=True).start()
        with self._lock:
            staged, self._staged = self._staged, None
        if staged is None:
            return None
        old = self.slot.swap(staged)
        metrics.MODEL_RELOADS.labels(outcome="loaded").inc()
        log.info("model swapped: %s -> %s", old.version if old else None, staged.version)
        return staged.version

    def _check(self) -> None:
        try:
            self._follow_alias()
        finally:
            with self._lock:
                self._checking = False
                self.checks += 1

    def _follow_alias(self) -> None:
        try:
            version = champion_version(self.settings)
        except TrackingUnavailable as exc:
            if self.store_error is None:
                log.warning("%s; still serving %s", exc, self.slot.version)
            self.store_error = str(exc)
            return
        if self.store_error is not None:
            log.info("tracking store answers again")
            self.store_error = None
        if version is None or version == self.slot.version or version in self.refused:
            return
        with self._lock:
            if self._staged is not None and self._staged.version == version:
                return
        try:
            model = load_serving_model(version, self.settings)
        except Exception as exc:  # any failure to load means: refuse, keep the old model
            self._refuse(version, str(exc).strip().splitlines()[0] if str(exc) else repr(exc))
            return
        with self._lock:
            self._staged = model

    def _refuse(self, version: str, reason: str) -> None:
        if self.refused.get(version) == reason:
            return
        self.refused[version] = reason
        metrics.MODEL_RELOADS.labels(outcome="refused").inc()
        log.error("refused model %s, still serving %s: %s", version, self.slot.version, reason)
