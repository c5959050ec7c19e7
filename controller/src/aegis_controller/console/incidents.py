"""The Incidents timeline: per incident, detection -> containment -> forensics ->
replacement -> trusted again, each with its time and the duration from detection, from
what the database holds (the quarantine order's acknowledgment, the recovery job's
history)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection

from .. import tables

LIMIT = 200
#: The recovery job state that marks each later stage (its first entry in the history).
STAGES = (("forensics", "collecting"), ("replacement", "replacing"), ("trusted", "trusted"))


def timeline(conn: Connection) -> dict[str, Any]:
    i, o, j, h = (tables.incidents.c, tables.orders.c, tables.recovery_jobs.c,
                  tables.recovery_history.c)
    rows = conn.execute(sa.select(i.incident_id, i.node_id, i.rule, i.severity, i.summary,
                                  i.created_at, o.acked_at, o.status)
                        .outerjoin(tables.orders, o.order_id == i.order_id)
                        .order_by(i.created_at.desc()).limit(LIMIT)).all()
    nodes = {r.node_id for r in rows}
    jobs: dict[str, list[Any]] = defaultdict(list)
    for job in conn.execute(sa.select(j.job_id, j.node_id, j.flagged_at, j.state)
                            .where(j.node_id.in_(nodes)).order_by(j.flagged_at)):
        jobs[job.node_id].append(job)
    job_ids = [x.job_id for js in jobs.values() for x in js]
    reached: dict[str, dict[str, float]] = defaultdict(dict)
    for step in conn.execute(sa.select(h.job_id, h.state, h.at).where(h.job_id.in_(job_ids))
                             .order_by(h.job_id, h.seq)):
        reached[step.job_id].setdefault(step.state, step.at)
    out = []
    for r in rows:
        detected = float(r.created_at)
        job = next((x for x in jobs[r.node_id] if x.flagged_at >= detected - 60), None)
        stages = [{"stage": "detection", "at": detected, "after_s": 0.0}]
        contained = float(r.acked_at) if r.acked_at else None
        stages.append({"stage": "containment", "at": contained,
                       "after_s": None if contained is None else contained - detected})
        for stage, state in STAGES:
            at = reached[job.job_id].get(state) if job is not None else None
            stages.append({"stage": stage, "at": at,
                           "after_s": None if at is None else at - detected})
        out.append({"incident_id": r.incident_id, "node_id": r.node_id, "rule": r.rule,
                    "severity": r.severity, "summary": r.summary,
                    "job_id": job.job_id if job is not None else None,
                    "job_state": job.state if job is not None else None, "stages": stages})
    return {"incidents": out}
