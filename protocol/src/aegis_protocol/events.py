"""Events: what the agent observes, spools and forwards to the controller.

An event's ``id`` is assigned once by the agent when it is first spooled and never
changes, so a batch sent twice (at-least-once delivery) is stored once: the controller
keys events on (node_id, id).

Every field is bounded (string lengths, numbers within int64 and finite, key and batch
counts) so that one enrolled node cannot make the controller store or parse without limit;
``tests/unit/test_protocol_bounds.py`` checks each model's schema for an unbounded field.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

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

MAX_BATCH = 1000
#: Keys per event's ``data``, and characters per key.
MAX_DATA_KEYS = 64
MAX_KEY_LEN = 64
#: Characters per string value (a path is at most PATH_MAX, 4096 bytes).
MAX_VALUE_LEN = 4096
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

Int64 = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]
Scalar = (Annotated[str, Field(max_length=MAX_VALUE_LEN)] | Int64
          | Annotated[float, Field(allow_inf_nan=False)] | bool | None)


def new_event_id() -> uuid.UUID:
    return uuid.uuid4()


class Event(BaseModel):
    """One observation. ``data`` holds the kind's fields as flat scalars."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: uuid.UUID = Field(default_factory=new_event_id)
    ts_ns: Annotated[int, Field(ge=0, le=INT64_MAX,
                                description="wall clock, ns since the epoch")]
    kind: EventKind
    severity: Severity = "info"
    data: dict[Annotated[str, Field(max_length=MAX_KEY_LEN)], Scalar] = Field(
        default_factory=dict, max_length=MAX_DATA_KEYS
    )

    @field_validator("data", mode="before")
    @classmethod
    def _integers_fit_int64(cls, data: object) -> object:
        # Without this an integer outside int64 falls through the union to float and is
        # stored rounded; refuse it instead, naming the key.
        if isinstance(data, dict):
            for key, value in data.items():
                if (isinstance(value, int) and not isinstance(value, bool)
                        and not INT64_MIN <= value <= INT64_MAX):
                    raise ValueError(f"data.{key}: integer {value} is outside int64 "
                                     f"[{INT64_MIN}, {INT64_MAX}]; send it as a string")
        return data


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

    stored: Annotated[int, Field(ge=0, le=MAX_BATCH)]
    duplicates: Annotated[int, Field(ge=0, le=MAX_BATCH)]
