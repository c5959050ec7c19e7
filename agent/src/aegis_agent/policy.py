"""The local policy: rules that map events to actions (log, alert, deny, quarantine).

A rule matches an event by kind and by data fields: each field in ``match`` must have one
of the listed values, each field in ``match_prefix`` a string value that starts with one
of the listed prefixes (e.g. an exec whose filename is under /tmp/). With a threshold
it fires when ``count`` matching events arrive within ``seconds`` (per value of the
``by`` field, e.g. per source address), then its window starts over. :func:`respond`
carries a decision out through the same :class:`~aegis_agent.enforcement.Enforcement`
verbs as the socket and orders (source ``policy``).
"""

from __future__ import annotations

import os
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


@dataclass(frozen=True)
class _Compiled:
    """A rule as the hot path checks it: match values as sets (a hash lookup per field,
    not a scan of the list; scalars compare the same either way), prefixes as one tuple
    for ``str.startswith`` (a string value that starts with one of them; any other value
    never does)."""

    rule: Rule
    match: tuple[tuple[str, frozenset[object]], ...]
    prefixes: tuple[tuple[str, tuple[str, ...]], ...]

    def matches(self, data: dict[str, object]) -> bool:
        for k, values in self.match:
            if data.get(k) not in values:
                return False
        for k, prefixes in self.prefixes:
            value = data.get(k)
            if not (isinstance(value, str) and value.startswith(prefixes)):
                return False
        return True

    @classmethod
    def of(cls, rule: Rule) -> _Compiled:
        return cls(rule, tuple((k, frozenset(v)) for k, v in rule.match.items()),
                   tuple((k, tuple(v)) for k, v in rule.match_prefix.items()))


class Policy:
    def __init__(self, rules: list[Rule]) -> None:
        self.rules = rules
        self._windows: dict[tuple[str, str | None], deque[float]] = defaultdict(deque)
        # kind -> the rules for it, in order: an event of a kind no rule names costs one
        # dict lookup
        self._by_kind: dict[str, list[_Compiled]] = {}
        for rule in rules:
            compiled = _Compiled.of(rule)
            for kind in dict.fromkeys(rule.kinds()):
                self._by_kind.setdefault(kind, []).append(compiled)

    def evaluate(self, event: Event, now: float | None = None) -> list[Decision]:
        rules = self._by_kind.get(event.kind)
        if not rules:
            return []
        data = event.data
        decisions = []
        for c in rules:
            if not c.matches(data):
                continue
            rule = c.rule
            if now is None:
                now = time.monotonic()
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


CGROUP_ROOTS = (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup"))


def cgroup2_root() -> Path:
    """Where the cgroup v2 tree is mounted: /sys/fs/cgroup/unified on a hybrid hierarchy,
    /sys/fs/cgroup on a pure v2 host (bookworm's default). Only the first root holding a
    ``cgroup.procs`` counts: on a hybrid host the other is v1's tmpfs."""
    for root in CGROUP_ROOTS:
        if (root / "cgroup.procs").is_file():
            return root
    raise FileNotFoundError("no cgroup v2 hierarchy (looked for cgroup.procs under "
                            + " and ".join(map(str, CGROUP_ROOTS)) + ")")


def cgroup_by_id(cgroup_id: int) -> str:
    """The cgroup v2 directory whose id (its inode) is ``cgroup_id``, the id a connect
    event carries from the kernel: no process is looked up afterwards, so an exited or
    reused PID cannot point the decision at another cgroup."""
    for top, dirs, _files in os.walk(cgroup2_root()):
        if os.stat(top).st_ino == cgroup_id:
            return top
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(top, d))]
    raise FileNotFoundError(f"no cgroup v2 directory with id {cgroup_id} (it was removed)")


def respond(d: Decision, enforcement: Enforcement) -> str:
    """Carry out ``d``; returns what was done (raises what the verb raises).

    deny: an exec event denies the file the kernel ran (the event's device and inode; the
    path, which the user chose, is not resolved again: a symlink ``nc`` to sshd must not
    get sshd denied) and kills the event's process if it still runs that file (an
    exec_denied event's process was already refused or killed by the kernel); a #!
    script's event names its interpreter (``interpreted``), which is never denied (every
    shell would be): its process is only killed. A connect event quarantines the event's
    cgroup (its id from the kernel, not a later look-up of the PID); quarantine: the
    node's segment; log and alert only record the decision."""
    ev = d.event
    if d.action in ("log", "alert"):
        return "recorded"
    if d.action == "deny":
        if ev.kind.startswith("exec"):
            dev, ino = _event_int(ev, "dev"), _event_int(ev, "ino")
            pid = ev.data.get("pid")
            running = pid if ev.kind == "exec" and isinstance(pid, int) and \
                not isinstance(pid, bool) and pid > 0 else None
            return enforcement.deny_exec_file(dev, ino, source="policy",
                                              seen_as=str(ev.data.get("filename")),
                                              pid=running,
                                              interpreted=ev.data.get("interpreted") is True
                                              ).summary
        if ev.kind.startswith("connect"):
            cgid = _event_int(ev, "cgroup_id")
            return enforcement.quarantine_cgroup(cgroup_by_id(cgid), source="policy",
                                                 cgroup_id=cgid).summary
        return "nothing to deny for this event kind"
    return enforcement.quarantine(source="policy").summary


def _event_int(ev: Event, name: str) -> int:
    value = ev.data.get(name)
    if isinstance(value, str) and value.isdigit():  # a u64 above int64 (events.u64)
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"a {ev.kind} event without a kernel {name} cannot be denied: "
                         f"deny takes the file or cgroup the kernel named, never a path or PID")
    return value
