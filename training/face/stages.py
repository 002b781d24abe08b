"""Process-wide counters of the face path's stages (detect, align, embed): time and misses,
read by the service's Prometheus collector at scrape time."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

STAGES = ("detect", "align", "embed")


@dataclass
class StageTotals:
    calls: int = 0
    images: int = 0
    seconds: float = 0.0


class FaceStageStats:
    """Totals per stage since start-up, and the images in which no face was found (by what
    the face step did then: "fallback" or "refused")."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.stages = {s: StageTotals() for s in STAGES}
        self.misses = {"fallback": 0, "refused": 0}

    @contextmanager
    def timed(self, stage: str, images: int = 1):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - t0, images)

    def add(self, stage: str, seconds: float, images: int = 1) -> None:
        with self._lock:
            t = self.stages[stage]
            t.calls, t.images, t.seconds = t.calls + 1, t.images + images, t.seconds + seconds

    def miss(self, outcome: str) -> None:
        with self._lock:
            self.misses[outcome] += 1

    def snapshot(self) -> tuple[dict[str, StageTotals], dict[str, int]]:
        with self._lock:
            return ({s: StageTotals(t.calls, t.images, t.seconds) for s, t in self.stages.items()},
                    dict(self.misses))


FACE_STAGES = FaceStageStats()
