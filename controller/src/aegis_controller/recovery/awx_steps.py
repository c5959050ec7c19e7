"""The recovery steps as AWX / Automation Controller job templates (``backend: awx`` in the
recovery settings): the same :class:`~.steps.Steps` contract as the runner steps, each
step one job launched through AWX's REST API (:class:`aegis_controller.awx.AwxClient`).

Each step launches its template (``awx.templates.<step>``, a name or an id) with these
extra variables (the template must prompt for variables on launch, or have them in its
survey):

- ``aegis_target``: the node; ``aegis_recovery_job``, ``aegis_recovery_step``,
  ``aegis_recovery_attempt`` (the job's lease generation) and ``aegis_recovery_data``
  (the job's data so far: what earlier steps returned, never a secret);
- collect: ``forensics_incident`` (the job id, as the runner's forensics play gets it);
- enroll: ``agent_bootstrap_token_command``, the command line the agent play runs for a
  one-time bootstrap token (it runs where the play's control node is: AWX's execution
  environment must be able to run it, e.g. over SSH to the controller).

A template hands its result back with ``set_stats`` under ``aegis_result`` (AWX keeps it
in the job's ``artifacts``): collect ``bundle_path``, ``bundle_sha256`` and
``bundle_bytes``; replace ``old_instance_id`` and ``new_instance_id``; verify ``golden``
(the new node's golden record, a JSON string). The engine checks them as it checks the
runner's.

The job's events stream into the step's progress (the job's history) as they arrive: each
task result with its host and status, a failure with its message unless the task is
``no_log``. A cancelled step (shutdown, lost lease) cancels its AWX job; a failed, errored
or canceled job fails the step with AWX's error. The AWX job id is remembered in the job's
data (``awx_<step>_job``) as soon as it is launched: a step resumed after the controller
died follows that job if it is still running (or takes its result if it succeeded)
instead of launching a second one.

The AWX token is read (``awx.token_file`` or ``$awx.token_env``) when a step runs and kept
only in the HTTP client's headers: it reaches no log, error, history line or the ledger.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from typing import Any

from ..awx import FINAL_STATUSES, AwxClient, AwxError, JobResult
from .settings import STEP_NAMES, AwxSettings, RecoverySettings, RecoverySettingsInvalid
from .steps import DryRun, StepCancelled, StepContext, StepError, one_line

#: The key of a template's ``set_stats`` data that is the step's result.
RESULT_KEY = "aegis_result"
#: AWX's task result events and the status each one shows.
_RESULTS = {"runner_on_ok": "ok", "runner_on_failed": "failed",
            "runner_on_unreachable": "unreachable", "runner_on_skipped": "skipped",
            "runner_item_on_failed": "failed"}


class AwxSteps:
    """The :class:`~.steps.Steps` of the ``awx`` backend (see the module doc)."""

    def __init__(self, settings: RecoverySettings) -> None:
        if settings.awx is None:
            raise ValueError(f"recovery settings {settings.path}: backend {settings.backend} "
                             "has no awx section for the AWX steps")
        self.settings = settings
        self.awx: AwxSettings = settings.awx

    # -- the steps ------------------------------------------------------------------------
    def contain(self, ctx: StepContext) -> Mapping[str, Any]:
        return self._step(ctx, "contain", {})

    def collect(self, ctx: StepContext) -> Mapping[str, Any]:
        return self._step(ctx, "collect", {"forensics_incident": ctx.job_id})

    def replace(self, ctx: StepContext) -> Mapping[str, Any]:
        return self._step(ctx, "replace", {})

    def verify(self, ctx: StepContext) -> Mapping[str, Any]:
        return self._step(ctx, "verify", {})

    def enroll(self, ctx: StepContext, token_command: Sequence[str]) -> Mapping[str, Any]:
        if not token_command or not all(isinstance(a, str) and a for a in token_command):
            raise StepError("enroll needs a token command (a command line that prints a "
                            "one-time bootstrap token for the node id appended to it)")
        return self._step(ctx, "enroll",
                          {"agent_bootstrap_token_command": shlex.join(token_command)},
                          timeout=self.settings.enroll_timeout_s)

    def dry_run(self, node_id: str) -> DryRun:
        """The templates each step would launch, looked up in AWX (nothing launched)."""
        lines = []
        with self._client() as client:
            for step in STEP_NAMES:
                template = self.awx.templates[step]
                try:
                    found = client.template_id(template)
                except AwxError as exc:
                    raise StepError(f"{step}: {exc.message}") from None
                lines.append(f"{step}: AWX job template {template!r} (id {found})")
        return DryRun(node_id=node_id, terraform_plan=[
            f"the replace step's AWX job template ({self.awx.templates['replace']!r}) "
            f"replaces {node_id} in AWX: no plan is made from here"], playbooks=lines)

    def templates(self) -> list[str]:
        """The job templates a recovery launches, in order."""
        return [f"{step}: {self.awx.templates[step]!r}" for step in STEP_NAMES]

    # -- one step -------------------------------------------------------------------------
    def _client(self) -> AwxClient:
        try:
            token = self.awx.token()
            return AwxClient(self.awx.url, token, ca=self.awx.ca_file,
                             verify_tls=self.awx.verify_tls, poll_interval=self.awx.poll_s)
        except RecoverySettingsInvalid as exc:
            raise StepError(str(exc)) from None
        except AwxError as exc:
            raise StepError(exc.message) from None

    def _step(self, ctx: StepContext, step: str, extra: Mapping[str, Any], *,
              timeout: float | None = None) -> dict[str, Any]:
        template = self.awx.templates[step]
        key = f"awx_{step}_job"
        timeout = self.awx.timeout_s if timeout is None else timeout
        extra_vars = {"aegis_target": ctx.node_id, "aegis_recovery_job": ctx.job_id,
                      "aegis_recovery_step": step, "aegis_recovery_attempt": ctx.generation,
                      "aegis_recovery_data": dict(ctx.data), **extra}
        with self._client() as client:
            try:
                job_id = self._previous(client, ctx, step, key)
                if job_id is None:
                    if ctx.cancel.is_set():
                        raise StepCancelled(f"{step} cancelled before its AWX job launched")
                    job_id = client.launch(template, extra_vars)
                    try:
                        ctx.remember(**{key: job_id})  # a resumed attempt follows this job
                    except StepCancelled:  # not ours to run (lease lost): nor is the job
                        _cancel(client, job_id)
                        raise
                    ctx.progress(f"AWX job {job_id} launched from job template {template!r}",
                                 step=step, awx_job=job_id, template=str(template))
                events = _Events(ctx, step, job_id)
                try:
                    result = client.wait(job_id, events, timeout=timeout, cancel=ctx.cancel)
                except AwxError:
                    if ctx.cancel.is_set():
                        raise
                    cancelled = _cancel(client, job_id)
                    raise StepError(f"AWX job {job_id} (job template {template!r}) did not "
                                    f"finish within {timeout:g} s: "
                                    f"{'canceled' if cancelled else 'could not be canceled'}"
                                    ) from None
            except AwxError as exc:
                if ctx.cancel.is_set():
                    raise StepCancelled(one_line(exc.message)) from None
                raise StepError(one_line(exc.message)) from None
        return self._outcome(ctx, step, template, key, result, events)

    def _previous(self, client: AwxClient, ctx: StepContext, step: str,
                  key: str) -> int | None:
        """The AWX job a previous attempt of this step launched, if it is to be followed
        (still running, or successful), else None (launch a new one)."""
        previous = ctx.data.get(key)
        if not isinstance(previous, int) or isinstance(previous, bool):
            return None
        try:
            status = str(client.status(previous).get("status", ""))
        except AwxError as exc:
            if exc.status != 404:
                raise
            status = "deleted"  # from AWX meanwhile: nothing to follow
        if status == "deleted":
            ctx.progress(f"AWX job {previous} of a previous attempt is gone from AWX: "
                         "launching the job template again", step=step, awx_job=previous)
            return None
        if status in FINAL_STATUSES and status != "successful":
            ctx.progress(f"AWX job {previous} of a previous attempt ended {status}: "
                         "launching the job template again", step=step, awx_job=previous)
            return None
        ctx.progress(f"following AWX job {previous} of a previous attempt ({status})",
                     step=step, awx_job=previous)
        return previous

    @staticmethod
    def _outcome(ctx: StepContext, step: str, template: int | str, key: str,
                 result: JobResult, events: _Events) -> dict[str, Any]:
        job = result.job_id
        if result.status == "canceled" and ctx.cancel.is_set():
            raise StepCancelled(f"AWX job {job} canceled")
        if result.status != "successful":
            why = result.job_explanation or events.failure or "no error reported"
            raise StepError(one_line(f"AWX job {job} (job template {template!r}) "
                                     f"{result.status}: {why}"))
        found = result.artifacts.get(RESULT_KEY, {})
        if not isinstance(found, Mapping):
            raise StepError(f"AWX job {job} (job template {template!r}) set {RESULT_KEY} to "
                            f"a {type(found).__name__}, not a mapping of results")
        ctx.progress(f"AWX job {job} successful ({result.events_seen} events)", step=step,
                     awx_job=job)
        return {**found, key: job}


def _cancel(client: AwxClient, job_id: int) -> bool:
    """Ask AWX to cancel ``job_id``; whether it took the request."""
    try:
        client.cancel(job_id)
    except AwxError:
        return False
    return True


class _Events:
    """Streams an AWX job's events into the step's progress; keeps the first failure."""

    def __init__(self, ctx: StepContext, step: str, job_id: int) -> None:
        self.ctx = ctx
        self.step = step
        self.job_id = job_id
        self.failure: str | None = None

    def __call__(self, event: Mapping[str, Any]) -> None:
        kind = str(event.get("event", ""))
        data = event.get("event_data") or {}
        if kind == "playbook_on_play_start":
            self._line(f"play {data.get('play') or event.get('play') or ''!r}", kind)
            return
        status = _RESULTS.get(kind)
        if status is None:
            return
        if status == "ok" and event.get("changed"):
            status = "changed"
        host = event.get("host_name") or data.get("host") or "?"
        task = event.get("task") or data.get("task") or "?"
        res = data.get("res") if isinstance(data.get("res"), Mapping) else {}
        hidden = bool(res.get("_ansible_no_log")) or "censored" in res
        message = ""
        if status in ("failed", "unreachable"):
            message = "(output hidden: no_log)" if hidden else str(
                res.get("msg") or event.get("stdout") or "")
        line = f"task {task!r} on {host}: {status}" + (f": {message}" if message else "")
        if status in ("failed", "unreachable") and self.failure is None:
            self.failure = one_line(line)
        self._line(line, kind, host=host, task=task, status=status)

    def _line(self, text: str, kind: str, **fields: Any) -> None:
        self.ctx.progress(one_line(f"[awx {self.job_id}] {text}"), step=self.step,
                          awx_job=self.job_id, event=kind, **fields)
