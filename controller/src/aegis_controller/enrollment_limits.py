"""Limits on unauthenticated enrollment traffic: a per-source rate limit (a token bucket
per client address) and the count of unknown-token refusals, recorded as one ledger
record per window instead of one signed record per guess."""

from __future__ import annotations

import threading
import time
from collections import Counter, OrderedDict
from typing import Any

#: Attempts one source may make at once, and how many more it gets per second.
BURST = 30
PER_SECOND = 1.0
#: Sources remembered (least recently seen forgotten first), so spoofed variety is bounded.
MAX_SOURCES = 10_000
#: Seconds of unknown-token noise counted into one ledger record.
NOISE_WINDOW = 60.0


class SourceLimiter:
    """A token bucket per source address; :meth:`allow` spends one token."""

    def __init__(self, burst: int = BURST, per_second: float = PER_SECOND,
                 max_sources: int = MAX_SOURCES) -> None:
        self.burst = burst
        self.per_second = per_second
        self.max_sources = max_sources
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def allow(self, source: str, now: float | None = None) -> float:
        """0 if ``source`` may go on now, else the seconds until it may."""
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, then = self._buckets.pop(source, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - then) * self.per_second)
            wait = 0.0 if tokens >= 1 else (1 - tokens) / self.per_second
            self._buckets[source] = (tokens - 1 if wait == 0 else tokens, now)
            while len(self._buckets) > self.max_sources:
                self._buckets.popitem(last=False)
            return wait


class NoiseCounter:
    """Unknown-token refusals of one window; :meth:`add` returns the finished window's
    summary (to record) once a refusal arrives after the window, :meth:`flush` any time."""

    def __init__(self, window: float = NOISE_WINDOW) -> None:
        self.window = window
        self._lock = threading.Lock()
        self._start: float | None = None
        self._started_at = 0
        self._sources: Counter[str] = Counter()

    def add(self, source: str, now: float | None = None) -> dict[str, Any] | None:
        now = time.monotonic() if now is None else now
        with self._lock:
            done = None
            if self._start is not None and now - self._start >= self.window:
                done = self._summary()
            if self._start is None:
                self._start, self._started_at = now, int(time.time())
            self._sources[source] += 1
            return done

    def flush(self) -> dict[str, Any] | None:
        with self._lock:
            return self._summary() if self._start is not None else None

    def _summary(self) -> dict[str, Any]:
        summary = {"reason": "unknown bootstrap tokens", "count": sum(self._sources.values()),
                   "sources": dict(self._sources.most_common(10)),
                   "distinct_sources": len(self._sources), "since": self._started_at,
                   "until": int(time.time())}
        self._start, self._sources = None, Counter()
        return summary
