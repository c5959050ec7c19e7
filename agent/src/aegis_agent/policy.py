"""The local policy: rules that map events to actions (log, alert, deny, quarantine).

A rule matches an event by kind and by data fields (each listed field must have one of
the listed values); with a threshold it fires when ``count`` matching events arrive
within ``seconds`` (per value of the ``by`` field, e.g. per source address), then its
window starts over. :func:`respond` carries a decision out through the same
:class:`~aegis_agent.enforcement.Enforcement` verbs as the socket and orders
(source ``policy``).
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from dataclasses import dataclass
from pathlib import Path

from aegis_protocol.events import Event

from .config import Rule
from .enforcement import Enforcement


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


def cgroup_of(pid: int) -> str:
    """The cgroup v2 directory of ``pid`` (hybrid hierarchy: under /sys/fs/cgroup/unified)."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            rel = line[3:].lstrip("/")
            for root in (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup")):
                if (root / "cgroup.procs").exists() and (root / rel / "cgroup.procs").exists():
                    return str(root / rel)
    raise FileNotFoundError(f"no cgroup v2 directory found for pid {pid}")


def respond(d: Decision, enforcement: Enforcement) -> str:
    """Carry out ``d``; returns what was done (raises what the verb raises).

    deny: an exec event denies the file, a connect event quarantines the process's
    cgroup; quarantine: the node's segment; log and alert only record the decision."""
    ev = d.event
    if d.action in ("log", "alert"):
        return "recorded"
    if d.action == "deny":
        if ev.kind.startswith("exec"):
            return enforcement.deny_exec(str(ev.data["filename"]), source="policy").summary
        if ev.kind.startswith("connect"):
            cgroup = cgroup_of(int(ev.data["pid"]))  # type: ignore[arg-type]
            return enforcement.quarantine_cgroup(cgroup, source="policy").summary
        return "nothing to deny for this event kind"
    return enforcement.quarantine(source="policy").summary
