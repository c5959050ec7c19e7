"""Events: what the agent observes, spools and forwards to the controller.

An event's ``id`` is assigned once by the agent when it is first spooled and never
changes, so a batch sent twice (at-least-once delivery) is stored once: the controller
keys events on (node_id, id).
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

EventKind = Literal[
    "exec",  # a process started a new image (pid, ppid, uid, comm, filename, ino, dev)
    "exec_denied",  # an exec on the deny set was killed (or refused by BPF-LSM)
    "connect",  # an outbound connect (pid, comm, daddr, dport, proto)
    "connect_denied",  # a connect refused by the cgroup hook of a quarantined workload
    "drop",  # a packet the segmentation filter dropped (or would drop, in observe mode)
    "policy",  # the local policy took an action (alert, deny, quarantine)
    "agent",  # the agent itself: start, stop, watchdog, spool alarms, corrupt spool
]
Severity = Literal["debug", "info", "notice", "warning", "critical"]
Scalar = str | int | float | bool | None

MAX_BATCH = 1000


def new_event_id() -> uuid.UUID:
    return uuid.uuid4()


class Event(BaseModel):
    """One observation. ``data`` holds the kind's fields as flat scalars."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: uuid.UUID = Field(default_factory=new_event_id)
    ts_ns: Annotated[int, Field(ge=0, description="wall clock, ns since the epoch")]
    kind: EventKind
    severity: Severity = "info"
    data: dict[Annotated[str, Field(max_length=64)], Scalar] = Field(
        default_factory=dict, max_length=64
    )


def agent_event(what: str, severity: Severity = "info", **data: Scalar) -> Event:
    """An event about the agent itself (kind ``agent``, ``data.what`` names it)."""
    return Event(ts_ns=time.time_ns(), kind="agent", severity=severity,
                 data={"what": what, **data})


class EventBatch(BaseModel):
    """What the agent posts to the controller: events from its spool, oldest first."""

    model_config = ConfigDict(extra="forbid")

    node_id: Annotated[str, Field(min_length=1, max_length=128)]
    events: Annotated[list[Event], Field(max_length=MAX_BATCH)]


class EventBatchAck(BaseModel):
    """The controller's answer: how many were new and how many it already had."""

    model_config = ConfigDict(extra="forbid")

    stored: int
    duplicates: int
