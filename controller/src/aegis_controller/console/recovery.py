"""The Recovery jobs page: each job's position in the state machine and the guard rails'
status (in flight against the limit, starts left this hour, the breaker), from the rails
the recovery engine runs with (the defaults when this controller runs none)."""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection

from .. import tables
from ..recovery.guard import HOUR_S, GuardRails
from ..recovery.states import IN_FLIGHT, JobState

LIMIT = 200
#: The normal path, for the state-machine position.
PATH = (JobState.QUEUED, JobState.CONTAINING, JobState.COLLECTING, JobState.REPLACING,
        JobState.VERIFYING, JobState.ENROLLING, JobState.TRUSTED)


def jobs(conn: Connection, rails: GuardRails | None) -> dict[str, Any]:
    j = tables.recovery_jobs.c
    rows = conn.execute(sa.select(j.job_id, j.node_id, j.cause, j.state, j.reason,
                                  j.flagged_at, j.started_at, j.ended_at, j.failed_step,
                                  j.error, j.approved_by)
                        .order_by(j.flagged_at.desc()).limit(LIMIT)).all()
    now = time.time()
    configured = rails is not None
    rails = rails or GuardRails()
    in_flight = sum(1 for r in rows if r.state in IN_FLIGHT)
    started_hour = sum(1 for r in rows if r.started_at and r.started_at >= now - HOUR_S)
    # the engine's rule (recovery.guard._held_by_history): distinct nodes quarantined within
    # the window, here the one ending now: a job flagged now would be held past the threshold
    flagged_window = len({r.node_id for r in rows
                          if now - rails.breaker_window_s <= r.flagged_at <= now})
    out = []
    for r in rows:
        step = PATH.index(JobState(r.state)) if r.state in PATH else None
        out.append({**dict(r._mapping), "step": None if step is None else step + 1,
                    "steps": len(PATH),
                    "may_decide": r.state == JobState.AWAITING_APPROVAL})
    return {"jobs": out, "path": [str(s) for s in PATH], "guard_rails": {
        "configured": configured, "in_flight": in_flight, "max_in_flight": rails.max_in_flight,
        "started_last_hour": started_hour, "max_per_hour": rails.max_per_hour,
        "budget_left": max(0, rails.max_per_hour - started_hour),
        "flagged_in_window": flagged_window, "breaker_threshold": rails.breaker_threshold,
        "breaker_window_s": rails.breaker_window_s,
        "breaker_open": flagged_window > rails.breaker_threshold,
        "approval_mode": rails.approval_mode}}
