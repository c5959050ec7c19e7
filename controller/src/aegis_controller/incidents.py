"""Incident rules: which stored events become incidents, and which incidents make the
controller order a quarantine. Evaluated only on events stored for the first time, so a
resent batch never raises an incident twice; and at most once per node, rule and
:data:`INCIDENT_WINDOW` (:func:`first_per_rule` within a batch, the intake across
batches), so a flood of matching events raises one incident and at most one order."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from aegis_protocol.events import Event
from aegis_protocol.secrets import SECRETS_UNWRAP_FAILED

#: Seconds during which a node's further matches of one rule raise no new incident.
INCIDENT_WINDOW = 300


@dataclass(frozen=True)
class IncidentRule:
    name: str
    kind: str
    severity: str  # low | medium | high | critical
    quarantine: str | None = None  # soft | hard: the controller orders it
    when_action: str | None = None  # for policy events: the agent's action
    when_what: str | None = None  # for agent events: what happened (``data.what``)

    def matches(self, event: Event) -> bool:
        if event.kind != self.kind:
            return False
        if self.when_what is not None and event.data.get("what") != self.when_what:
            return False
        return self.when_action is None or event.data.get("action") == self.when_action


DEFAULT_RULES = (
    IncidentRule("denied-exec", "exec_denied", "high"),
    IncidentRule("denied-connect", "connect_denied", "medium"),
    IncidentRule("agent-quarantined-node", "policy", "critical", quarantine="hard",
                 when_action="quarantine"),
    IncidentRule("spool-corrupt", "agent", "medium", when_what="spool_corrupt"),
    # a wrapping token already used or made elsewhere: someone else may hold the secret_id
    IncidentRule("secrets-unwrap-failed", "agent", "critical",
                 when_what=SECRETS_UNWRAP_FAILED),
)


def summarize(event: Event) -> str:
    d = event.data
    if event.kind.startswith("exec"):
        return f"exec of {d.get('filename')} by pid {d.get('pid')} (uid {d.get('uid')})"
    if event.kind.startswith("connect"):
        return f"connect to {d.get('daddr')}:{d.get('dport')} by {d.get('comm')} ({d.get('pid')})"
    if event.kind == "policy":
        return f"agent rule {d.get('rule')}: {d.get('action')} ({d.get('result')})"
    return ", ".join(f"{k}={v}" for k, v in sorted(d.items()))[:500]


def incidents_for(event: Event, rules: tuple[IncidentRule, ...] = DEFAULT_RULES
                  ) -> list[IncidentRule]:
    return [rule for rule in rules if rule.matches(event)]


def first_per_rule(events: Iterable[Event], rules: tuple[IncidentRule, ...] = DEFAULT_RULES
                   ) -> list[tuple[IncidentRule, Event]]:
    """Each rule that ``events`` match, once, with the first event that matched it."""
    first: dict[str, tuple[IncidentRule, Event]] = {}
    for event in events:
        for rule in incidents_for(event, rules):
            first.setdefault(rule.name, (rule, event))
    return list(first.values())
