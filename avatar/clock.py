"""The clock that leases, TTLs, retry delays, rate-limit buckets and webhook backoff read: a callable returning epoch
seconds, `time.time` unless a caller passes another. Tests pass a `ManualClock` and move it forward instead of
sleeping, so nothing they check depends on how fast the machine is."""

from __future__ import annotations

import threading
import time
from typing import Callable

Clock = Callable[[], float]
"""Epoch seconds now."""

system_clock: Clock = time.time


class ManualClock:
    """A clock that moves only when told to (`advance`); safe to read from worker threads."""

    def __init__(self, start: float | None = None) -> None:
        self._now = time.time() if start is None else float(start)
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        """Move forward `seconds` (never back); returns the new time."""
        if seconds < 0:
            raise ValueError("a clock does not go back")
        with self._lock:
            self._now += seconds
            return self._now


__all__ = ["Clock", "ManualClock", "system_clock"]
