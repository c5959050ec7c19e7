"""The local policy: rules that map events to actions (log, alert, deny, quarantine).

A rule matches an event by kind and by data fields (each listed field must have one of
the listed values); with a threshold it fires when ``count`` matching events arrive
within ``seconds`` (per value of the ``by`` field, e.g. per source address), then its
window starts over.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from dataclasses import dataclass

from aegis_protocol.events import Event

from .config import Rule


@dataclass(frozen=True)
class Decision:
    rule: str
    action: str  # log | alert | deny | quarantine
    event: Event
    key: str | None = None


class Policy:
    def __init__(self, rules: list[Rule]) -> None:
        self.rules = rules
        self._windows: dict[tuple[str, str | None], deque[float]] = defaultdict(deque)

    def evaluate(self, event: Event, now: float | None = None) -> list[Decision]:
        now = time.monotonic() if now is None else now
        decisions = []
        for rule in self.rules:
            if event.kind not in rule.kinds():
                continue
            if any(event.data.get(k) not in values for k, values in rule.match.items()):
                continue
            key = None
            if rule.threshold:
                key = str(event.data.get(rule.threshold.by)) if rule.threshold.by else None
                window = self._windows[(rule.name, key)]
                window.append(now)
                while window and now - window[0] > rule.threshold.seconds:
                    window.popleft()
                if len(window) < rule.threshold.count:
                    continue
                window.clear()
            decisions.append(Decision(rule.name, rule.action, event, key))
        return decisions
