"""The explicit inputs the guard rails judge: a snapshot of the fleet and of the recovery
jobs, as plain frozen dataclasses the engine fills from its tables. Times are seconds on
one clock (the engine's ``time.time()``), passed in so that decisions are reproducible."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from .states import IN_FLIGHT, REPLACEMENT_STEPS, JobState


class Cause(StrEnum):
    """Why a node is to be replaced. A *compromised* node (the agent or a rule says so) is
    contained at once and replaced after forensics; an *unhealthy* node (silent: no
    heartbeat) may only be slow or cut off, so it waits ``GuardRails.startup_timeout_s``
    before it is eligible."""

    COMPROMISED = "compromised"
    UNHEALTHY = "unhealthy"


@dataclass(frozen=True)
class FleetNode:
    """One node of the fleet. ``state`` is its trust state (``aegis_controller.nodes.
    NodeState``): only a ``trusted`` node counts as available. Retired nodes are not part
    of the fleet (leave them out, or they are ignored)."""

    node_id: str
    role: str
    state: str

    @property
    def available(self) -> bool:
        return self.state == "trusted"


@dataclass(frozen=True)
class JobView:
    """One recovery job as the guard rails see it.

    ``flagged_at``: when the node was quarantined (compromised) or found silent (unhealthy).
    ``started_at``: when the job left ``queued`` for ``containing`` (None: not started).
    ``ended_at``: when it reached ``trusted`` or ``failed``.
    ``failed_step``: the step it failed in (None unless failed).
    ``approved_by``: the operator who approved it out of ``awaiting-approval``; an approved
    job is not held again (it still waits for a free slot, the rate limit and the previous
    replacement)."""

    job_id: str
    node_id: str
    cause: Cause
    state: JobState
    flagged_at: float
    started_at: float | None = None
    ended_at: float | None = None
    failed_step: JobState | None = None
    approved_by: str | None = None

    @property
    def in_flight(self) -> bool:
        return self.state in IN_FLIGHT

    @property
    def replacement_failed(self) -> bool:
        """Failed after its node's machine was (being) replaced."""
        return self.state == JobState.FAILED and self.failed_step in REPLACEMENT_STEPS
