"""The contract between the recovery engine and the steps that act on the outside world.

The engine (``engine.py``) owns the database: the job, its state, its lease and every ledger
record. A step owns one outside action: a playbook through ansible-runner, or Terraform.
The engine calls a step with a :class:`StepContext` and merges the mapping the step returns
into the job's durable ``data``; a step that fails raises :class:`StepError` (the job goes
to ``failed`` with that message, the node stays quarantined).

Every step is **resumable**: the controller may be killed while it runs and the step is
then called again (by a restarted controller or another replica) with the ``data`` the job
had before it started. So a step first looks at the world, e.g. the Terraform replace
compares the node's instance id with ``data["old_instance_id"]`` and does not destroy a
second time a node it already replaced. What a step must know if it is killed half-way
(the old instance id before Terraform destroys it) it saves at once with
``ctx.remember(**fields)``: the engine writes it into the job's ``data`` before the step
goes on, so a resumed attempt, on this replica or another, finds it. A step that starts
processes reports each process group with ``ctx.started_process`` before it waits; the engine
stores it with the job and, before it resumes a step, kills whatever is left of a group
recorded by a previous (dead) attempt, so no process of a killed step survives it.

Steps never receive nor return secrets in ``data`` (it is stored and shown by
``aegis-controller recovery show``); a one-time bootstrap token reaches the enroll
playbook only through ``token_command`` (run on the control node by the play itself).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


def one_line(text: str, limit: int = 400) -> str:
    """``text`` as one line of at most ``limit`` characters (for errors and progress)."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


class StepError(Exception):
    """A step failed; the message (one line, no secret) becomes the job's error."""


class StepCancelled(StepError):
    """The step was stopped because the engine lost the job's lease or is shutting down."""


@dataclass
class StepContext:
    """What a step gets from the engine.

    ``data``: the job's durable scratch, as it was before the step started (read-only for
    the step: return what to add or change). ``progress(message, **fields)`` appends a line
    to the job's history and the controller's JSON log (never pass a secret).
    ``started_process(pgid)``: call it with each process group started, before waiting.
    ``cancel``: set when the step must stop (lease lost, shutdown); pass it on to the
    Terraform and ansible-runner runners. ``remember(**fields)``: write ``fields`` into the
    job's durable ``data`` now (fenced by the lease), for a resumed attempt (no secret).
    """

    job_id: str
    node_id: str
    generation: int
    data: Mapping[str, Any]
    progress: Callable[..., None]
    started_process: Callable[[int], None]
    cancel: threading.Event = field(default_factory=threading.Event)
    remember: Callable[..., None] = field(default=lambda **_fields: None)


@dataclass(frozen=True)
class DryRun:
    """What a recovery of one node would do, without acting: the Terraform plan's
    summary lines and the playbooks in the order they would run."""

    node_id: str
    terraform_plan: Sequence[str]
    playbooks: Sequence[str]


class Steps(Protocol):
    """The outside actions of a recovery job, one per job state that acts.

    - ``contain``  (state containing): make sure the node is cut off (the quarantine
      playbook, soft or hard); the engine has already checked the controller's quarantine.
    - ``collect``  (collecting): the forensics playbook; returns at least
      ``bundle_path`` (where the age-encrypted bundle is now, on the controller),
      ``bundle_sha256`` and ``bundle_bytes``.
    - ``replace``  (replacing): Terraform ``apply -replace`` of exactly that node's
      resource; returns ``old_instance_id`` and ``new_instance_id``.
    - ``verify``   (verifying): the fresh node is reachable and has no drift (the roles
      converged, or in check mode for a baked image); returns ``golden`` (the fresh node's
      golden record, a JSON string) for its expected profile.
    - ``enroll``   (enrolling): the agent play with ``token_command`` (a command line that
      prints a one-time bootstrap token for the node id appended to it).
    - ``dry_run``: what a recovery of ``node_id`` would do (Terraform plan, playbooks).
    """

    def contain(self, ctx: StepContext) -> Mapping[str, Any]: ...

    def collect(self, ctx: StepContext) -> Mapping[str, Any]: ...

    def replace(self, ctx: StepContext) -> Mapping[str, Any]: ...

    def verify(self, ctx: StepContext) -> Mapping[str, Any]: ...

    def enroll(self, ctx: StepContext, token_command: Sequence[str]) -> Mapping[str, Any]: ...

    def dry_run(self, node_id: str) -> DryRun: ...
