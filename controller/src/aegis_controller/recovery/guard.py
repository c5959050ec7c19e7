"""Guard rails: whether a queued recovery job may start now, wait, or be held for an
operator, with one human-readable reason.

:func:`decide` is pure: it judges one queued job against explicit snapshots of the fleet
and of the recovery jobs (:mod:`.snapshot`) at a given time, so the engine can call it on
every tick and a test can step time. It decides the start of a job (``queued`` ->
``containing``), and a started job keeps its slot until it is attested ``trusted`` or
``failed``: a guard rail never stops a replacement half-way, which would leave a node
half-built. (The node's quarantine itself is not gated here: it is the quarantine order
made when the incident is raised.)

The answers:

- ``start``: move the job to ``containing``;
- ``wait``: leave it ``queued`` and ask again later (a free slot, the rate limit, a silent
  node's start-up timeout); ``not_before`` says when, if a time alone can change it;
- ``hold``: move it to ``awaiting-approval`` with the reason; it goes on only when an
  operator approves it (then it is not held again, but still waits like any job).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any

from .snapshot import Cause, FleetNode, JobView
from .states import TERMINAL, JobState

#: How a held job's reason tells the operator to go on (``aegis_controller.cli.recovery``;
#: keep the two in step).
APPROVE_HINT = "approve with `aegis-controller recovery approve {job_id}` (or reject it)"
HOUR_S = 3600


class GuardRailsInvalid(ValueError):
    """Guard rail settings that make no sense (the message names each and how to fix it)."""


@dataclass(frozen=True)
class GuardRails:
    """Recovery guard rails. The defaults brake: Cluster API's ``maxUnhealthy`` defaults to
    100 % (no brake at all) and remediation storms that replace a whole fleet are its
    users' top complaint (kubernetes-sigs/cluster-api#7353).

    - ``max_in_flight = 1``: one replacement at a time, so a bad image, playbook or
      Terraform change breaks one node, not many; a slot frees only when the replacement
      is attested trusted, so the next replacement starts only after the previous one is
      attested (AWS instance refresh gates on health checks; we gate on attestation).
    - ``max_unavailable_fraction = 0.34``: recover on our own only while at most a third of
      the fleet is out of service (a 3-node fleet can replace one node); more than that is
      rather an outage, a partition or a bad rule than compromised nodes. And never the
      last node of a role: it may hold the role's only data, and with it gone the role is
      down, so a human decides.
    - ``max_per_hour = 6``: even one at a time, a loop of quick replacements is a storm;
      six an hour is above what a healthy replacement pace needs (minutes each).
    - ``breaker_threshold = 2``, ``breaker_window_s = 600``: more than two nodes quarantined
      within ten minutes is rather a bad rule, a bad rollout or an attack on the
      controller than independent compromises: stop automatic rebuilds and ask a human.
    - ``max_attempts_per_node = 1``, ``cooldown_s = 1800``: a node quarantined again within
      30 minutes of its last recovery is likely to be quarantined again after another one
      (same cause: image, rule, persistent attacker), so it escalates instead of looping.
    - ``startup_timeout_s = 600``: a silent (unhealthy) node may only be slow, rebooting or
      cut off; it is replaced only after ten minutes of silence (Cluster API's
      ``nodeStartupTimeout`` default). A compromised node does not wait.
    - ``approval_mode = False``: rebuild-first is the product; set it to have every job
      wait for an operator.
    """

    max_in_flight: int = 1
    max_unavailable_fraction: float = 0.34
    max_per_hour: int = 6
    breaker_threshold: int = 2
    breaker_window_s: float = 600
    max_attempts_per_node: int = 1
    cooldown_s: float = 1800
    startup_timeout_s: float = 600
    approval_mode: bool = False

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise GuardRailsInvalid("invalid recovery guard rails: " + "; ".join(problems))

    def problems(self) -> list[str]:
        found = []
        stop = " (to stop automatic rebuilds, set approval_mode=True)"
        for name, hint in (("max_in_flight", stop), ("max_per_hour", stop),
                           ("breaker_threshold", stop), ("max_attempts_per_node", stop)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                found.append(f"{name} must be a whole number, got {value!r}")
            elif value < 1:
                found.append(f"{name} must be at least 1, got {value}{hint}")
        for name, least in (("breaker_window_s", None), ("cooldown_s", 0),
                            ("startup_timeout_s", 0)):
            value = getattr(self, name)
            if not _number(value):
                found.append(f"{name} must be a finite number of seconds, got {value!r}")
            elif least is None and value <= 0:
                found.append(f"{name} must be more than 0 seconds, got {value:g}")
            elif least is not None and value < least:
                found.append(f"{name} must be 0 or more seconds, got {value:g}")
        fraction = self.max_unavailable_fraction
        if not _number(fraction) or not 0 < fraction <= 1:
            found.append("max_unavailable_fraction must be a fraction of the fleet in (0, 1] "
                         f"(e.g. 0.34 for a third), got {fraction!r}")
        if not isinstance(self.approval_mode, bool):
            found.append(f"approval_mode must be true or false, got {self.approval_mode!r}")
        return found

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> GuardRails:
        """Guard rails from settings (a config file's or the CLI's), unknown names refused."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise GuardRailsInvalid(f"unknown recovery guard rail(s) {', '.join(unknown)} "
                                    f"(known: {', '.join(known)})")
        return cls(**values)


def _number(value: object) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))


class Action(StrEnum):
    START = "start"
    WAIT = "wait"
    HOLD = "hold"


@dataclass(frozen=True)
class Decision:
    """What to do with a queued job now, and why (for the job's history and the ledger).
    ``not_before``: for a wait only time can end (rate limit, start-up timeout), when to ask
    again; None when another job must move first."""

    action: Action
    reason: str
    not_before: float | None = None

    @property
    def next_state(self) -> JobState | None:
        """The state to move the job to (None: it stays queued)."""
        return {Action.START: JobState.CONTAINING,
                Action.HOLD: JobState.AWAITING_APPROVAL}.get(self.action)


def eligible_at(job: JobView, rails: GuardRails) -> float:
    """When ``job``'s node may be replaced: a compromised node at once (it was contained
    when flagged and forensics come first in the job), a silent (unhealthy) node only after
    ``startup_timeout_s`` of silence, counted from when it was flagged."""
    if job.cause == Cause.UNHEALTHY:
        return job.flagged_at + rails.startup_timeout_s
    return job.flagged_at


def decide(job: JobView, fleet: Iterable[FleetNode], history: Iterable[JobView],
           rails: GuardRails, now: float) -> Decision:
    """Whether the queued ``job`` may start now. ``fleet``: every node not retired, with its
    trust state; ``history``: the recovery jobs (any state; ``job`` itself may be among
    them), every quarantined node having one. Holds are checked before waits (approval
    mode, circuit breaker, failed previous replacement, attempt budget, unavailable
    fraction, last node of its role); an approved job skips the holds."""
    if job.state != JobState.QUEUED:
        raise ValueError(f"recovery job {job.job_id} is {job.state}: only a queued job is "
                         "decided (an awaiting-approval job is approved back to queued first)")
    nodes = [n for n in fleet if n.state != "retired"]
    node = next((n for n in nodes if n.node_id == job.node_id), None)
    if node is None:
        raise ValueError(f"node {job.node_id!r} of recovery job {job.job_id} is not in the "
                         "fleet snapshot (unknown or retired): fail the job")
    others = [j for j in history if j.job_id != job.job_id]
    same = next((j for j in others if j.node_id == job.node_id and j.in_flight), None)
    if same is not None:
        return Decision(Action.WAIT, f"job {same.job_id} for node {job.node_id} is already "
                                     f"{same.state}")
    ready = eligible_at(job, rails)
    if now < ready:
        return Decision(Action.WAIT, f"node {job.node_id} is silent (unhealthy) for "
                                     f"{now - job.flagged_at:.0f} s: replaced after "
                                     f"startup_timeout_s {rails.startup_timeout_s:g} "
                                     f"(in {ready - now:.0f} s) unless it comes back", ready)
    if not job.approved_by:
        held = (_held_by_history(job, others, rails, now)
                or _held_by_fleet(job, node, nodes, others, rails))
        if held is not None:
            return held
    return _pace(job, others, rails, now)


def _hold(job: JobView, reason: str) -> Decision:
    return Decision(Action.HOLD, f"{reason}; {APPROVE_HINT.format(job_id=job.job_id)}")


def _held_by_history(job: JobView, others: Sequence[JobView], rails: GuardRails,
                     now: float) -> Decision | None:
    """Approval mode, the circuit breaker, a failed previous replacement, the node's
    attempt budget."""
    if rails.approval_mode:
        return _hold(job, "approval mode: every recovery job waits for an operator")
    burst = sorted({j.node_id for j in [*others, job]
                    if j.flagged_at <= now
                    and abs(j.flagged_at - job.flagged_at) <= rails.breaker_window_s})
    if len(burst) > rails.breaker_threshold:
        return _hold(job, f"circuit breaker: {len(burst)} nodes quarantined within "
                          f"{rails.breaker_window_s:g} s ({', '.join(burst)}; "
                          f"breaker_threshold {rails.breaker_threshold}): automatic rebuilds "
                          "stopped")
    finished = [j for j in others if j.state in TERMINAL and j.started_at is not None
                and (j.state == JobState.TRUSTED or j.replacement_failed)]
    last = max(finished, key=lambda j: j.ended_at or 0, default=None)
    if last is not None and last.replacement_failed:
        return _hold(job, f"the previous replacement (job {last.job_id}, node "
                          f"{last.node_id}) failed in {last.failed_step}: automatic rebuilds "
                          "stopped until an operator approves one")
    recent = [j for j in others if j.node_id == job.node_id and j.started_at is not None
              and (j.ended_at or j.started_at) >= job.flagged_at - rails.cooldown_s]
    if len(recent) >= rails.max_attempts_per_node:
        latest = max(recent, key=lambda j: j.ended_at or j.started_at or 0)
        ago = job.flagged_at - (latest.ended_at or latest.started_at or 0)
        return _hold(job, f"node {job.node_id} was quarantined again {ago:.0f} s after its "
                          f"last recovery (job {latest.job_id}, {latest.state}): "
                          f"{len(recent)} attempt(s) within cooldown_s {rails.cooldown_s:g} "
                          f"(max_attempts_per_node {rails.max_attempts_per_node}): not "
                          "replaced again automatically, it would loop")
    return None


def _held_by_fleet(job: JobView, node: FleetNode, nodes: Sequence[FleetNode],
                   others: Sequence[JobView], rails: GuardRails) -> Decision | None:
    """The unavailable fraction of the fleet (a wait while a replacement that may bring it
    down is in flight) and the last node of a role."""
    out = [n for n in nodes if not n.available]
    if len(out) > rails.max_unavailable_fraction * len(nodes):
        share = (f"{len(out)} of {len(nodes)} nodes unavailable ({100 * len(out) / len(nodes):.0f} "
                 f"% > max_unavailable_fraction {rails.max_unavailable_fraction:g})")
        flying = [j for j in others if j.in_flight]
        if flying:
            return Decision(Action.WAIT, f"{share}: waits for the replacement in flight "
                                         f"(job {flying[0].job_id}, node {flying[0].node_id})")
        return _hold(job, f"{share}: too much of the fleet is out for automatic rebuilds")
    peers = [n for n in nodes if n.role == node.role and n.node_id != node.node_id
             and n.available]
    if not peers:
        return _hold(job, f"node {node.node_id} is the last node of role {node.role} (no "
                          f"other {node.role} node is trusted): never replaced automatically")
    return None


def _pace(job: JobView, others: Sequence[JobView], rails: GuardRails,
          now: float) -> Decision:
    flying = [j for j in others if j.in_flight]
    if len(flying) >= rails.max_in_flight:
        first = flying[0]
        return Decision(Action.WAIT, f"{len(flying)} replacement(s) in flight (max_in_flight "
                                     f"{rails.max_in_flight}; job {first.job_id}, node "
                                     f"{first.node_id}, is {first.state}): a slot frees "
                                     "when a replacement is attested trusted")
    hour = sorted(j.started_at for j in others
                  if j.started_at is not None and now - HOUR_S < j.started_at <= now)
    if len(hour) >= rails.max_per_hour:
        at = hour[len(hour) - rails.max_per_hour] + HOUR_S
        return Decision(Action.WAIT, f"{len(hour)} replacements started in the last hour "
                                     f"(max_per_hour {rails.max_per_hour}): next in "
                                     f"{at - now:.0f} s", at)
    how = f"approved by {job.approved_by}" if job.approved_by else "guard rails clear"
    return Decision(Action.START, f"{job.cause} node {job.node_id}: {how} ({len(flying)} of "
                                  f"{rails.max_in_flight} in flight, {len(hour)} of "
                                  f"{rails.max_per_hour} this hour)")
