"""The agent's watch on itself: CPU share and resident memory against configured limits.

Over a limit for ``grace`` consecutive checks means something is wrong (an event storm,
a leak): the agent says so and exits non-zero, and systemd restarts it; enforcement
stays pinned in the kernel meanwhile.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass

from .config import WatchdogConfig


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Reading:
    cpu_percent: float
    rss_mb: float
    over: list[str]
    strikes: int

    @property
    def fatal(self) -> bool:
        return self.strikes < 0


class SelfWatch:
    def __init__(self, cfg: WatchdogConfig) -> None:
        self.cfg = cfg
        self._last = (time.monotonic(), cpu_seconds())
        self.strikes = 0

    def check(self) -> Reading:
        now, cpu = time.monotonic(), cpu_seconds()
        wall = max(now - self._last[0], 1e-6)
        percent = 100.0 * (cpu - self._last[1]) / wall
        self._last = (now, cpu)
        rss = rss_mb()
        over = []
        if percent > self.cfg.max_cpu_percent:
            over.append(f"cpu {percent:.0f}% > {self.cfg.max_cpu_percent:.0f}%")
        if rss > self.cfg.max_rss_mb:
            over.append(f"rss {rss:.0f} MiB > {self.cfg.max_rss_mb:.0f} MiB")
        self.strikes = self.strikes + 1 if over else 0
        strikes = -1 if self.strikes >= self.cfg.grace else self.strikes
        return Reading(percent, rss, over, strikes)
