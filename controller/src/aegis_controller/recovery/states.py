"""A recovery job's states and the transitions between them.

    queued -> containing -> collecting -> replacing -> verifying -> enrolling -> trusted
    queued <-> awaiting-approval            (held by a guard rail; back on approval)
    any state but trusted -> failed

Every transition carries a reason; one not in :data:`ALLOWED` is refused, so a bug or a
forged request can never, say, take a job from ``containing`` straight to ``trusted``.

``failed`` is reachable from every active step (and from ``queued`` and
``awaiting-approval``: bad input, or an operator rejecting a held job). A failed job leaves
its node **quarantined**: a job never puts a half-built node in service, and the node's
quarantine is only lifted by a replacement attested trusted or by an operator.
``trusted`` and ``failed`` are final; a failed job is retried only as a new job (which the
guard rails judge again, attempt budget included).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class JobState(StrEnum):
    """A recovery job's states, in the order a job normally goes through them."""

    QUEUED = "queued"
    AWAITING_APPROVAL = "awaiting-approval"
    CONTAINING = "containing"
    COLLECTING = "collecting"
    REPLACING = "replacing"
    VERIFYING = "verifying"
    ENROLLING = "enrolling"
    TRUSTED = "trusted"
    FAILED = "failed"


_J = JobState
ALLOWED: dict[JobState, frozenset[JobState]] = {
    # -> awaiting-approval: a guard rail holds it (guard.decide answered "hold")
    _J.QUEUED: frozenset({_J.CONTAINING, _J.AWAITING_APPROVAL, _J.FAILED}),
    # -> queued: approved; -> failed: rejected (both operator only)
    _J.AWAITING_APPROVAL: frozenset({_J.QUEUED, _J.FAILED}),
    _J.CONTAINING: frozenset({_J.COLLECTING, _J.FAILED}),
    _J.COLLECTING: frozenset({_J.REPLACING, _J.FAILED}),
    _J.REPLACING: frozenset({_J.VERIFYING, _J.FAILED}),
    _J.VERIFYING: frozenset({_J.ENROLLING, _J.FAILED}),
    _J.ENROLLING: frozenset({_J.TRUSTED, _J.FAILED}),  # -> trusted: the new node attested
    _J.TRUSTED: frozenset(),
    _J.FAILED: frozenset(),
}
#: Steps that hold a replacement slot (count towards ``GuardRails.max_in_flight``): from
#: the start of containment until the replacement is attested trusted, not merely booted.
IN_FLIGHT = frozenset({_J.CONTAINING, _J.COLLECTING, _J.REPLACING, _J.VERIFYING,
                       _J.ENROLLING})
#: Steps in which the node's machine is being or has been replaced.
REPLACEMENT_STEPS = frozenset({_J.REPLACING, _J.VERIFYING, _J.ENROLLING})
TERMINAL = frozenset({_J.TRUSTED, _J.FAILED})
#: Transitions only an operator may make: approving or rejecting a held job.
OPERATOR_ONLY = frozenset({(_J.AWAITING_APPROVAL, _J.QUEUED),
                           (_J.AWAITING_APPROVAL, _J.FAILED)})


class JobTransitionRefused(ValueError):
    """A recovery job transition outside :data:`ALLOWED` (the message says why)."""


@dataclass(frozen=True)
class JobTransition:
    before: JobState
    after: JobState
    reason: str


def parse_state(value: str) -> JobState:
    """``value`` as a :class:`JobState`, or a clear error naming the states."""
    try:
        return JobState(value)
    except ValueError:
        raise JobTransitionRefused(
            f"unknown recovery job state {value!r} (one of: "
            f"{', '.join(s.value for s in JobState)})") from None


def in_flight(state: str) -> bool:
    """Whether a job in ``state`` holds a replacement slot (see :data:`IN_FLIGHT`)."""
    return parse_state(state) in IN_FLIGHT


def is_terminal(state: str) -> bool:
    return parse_state(state) in TERMINAL


def transition(current: str, target: str, reason: str, *,
               operator: bool = False) -> JobTransition:
    """The move from ``current`` to ``target`` with its ``reason``, or
    :class:`JobTransitionRefused` saying why it is not allowed."""
    before, after = parse_state(current), parse_state(target)
    if not reason or not reason.strip():
        raise JobTransitionRefused(f"a recovery job moving from {before} to {after} needs a "
                                   "reason (it goes on the ledger)")
    if before in TERMINAL:
        raise JobTransitionRefused(
            f"a recovery job cannot go from {before} to {after}: {before} is final"
            + (" (retry as a new job; its node stays quarantined)" if before == _J.FAILED
               else ""))
    if after not in ALLOWED[before]:
        allowed = ", ".join(sorted(ALLOWED[before]))
        raise JobTransitionRefused(f"a recovery job cannot go from {before} to {after} "
                                   f"(from {before} only to: {allowed})")
    if (before, after) in OPERATOR_ONLY and not operator:
        verb = "approve" if after == _J.QUEUED else "reject"
        raise JobTransitionRefused(f"only an operator can {verb} a job that is {before}")
    return JobTransition(before, after, reason)
