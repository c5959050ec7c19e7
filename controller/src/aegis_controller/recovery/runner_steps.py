"""The recovery steps that act on the world: playbooks through ansible-runner
(:class:`~aegis_controller.playbook.Ansible`) and Terraform
(:class:`~aegis_controller.terraform.Terraform`), as the :class:`~.steps.Steps` protocol
asks (resumable, process groups reported, no secret in data, progress, or on disk).

Each playbook step runs in a private data dir of its own under ``runs_dir`` with
ansible-runner's ``suppress_env_files`` (the environment is never written there) and the
whole dir is removed when the step ends, failed or not: the runner's artifacts (events,
stdout, the command with its environment) do not outlive the step. Task results stream
to ``ctx.progress`` as they arrive; a ``no_log`` task shows only its host, name and status.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import re
import shlex
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..playbook import (
    Ansible,
    PlaybookCancelled,
    PlaybookError,
    PlaybookFailure,
    PlayEvent,
    PlayResult,
    progress_line,
)
from ..terraform import (
    Terraform,
    TerraformCancelled,
    TerraformEvent,
    TerraformFailure,
)
from .settings import PLAYBOOKS, RecoverySettings
from .steps import DryRun, StepCancelled, StepContext, StepError
from .steps import one_line as _one_line

#: A node id as it may appear in a Terraform address, a host pattern and a file name.
NODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
#: The first bytes of every age file (the bundle must be encrypted before it leaves).
AGE_HEADER = b"age-encryption.org/v1\n"
#: Terraform JSON UI events worth a line in the job's history.
_TF_PROGRESS = {"apply_start", "apply_complete", "apply_errored", "provision_start",
                "provision_complete", "provision_errored", "change_summary", "diagnostic",
                "planned_change"}


def _hidden(event: PlayEvent) -> bool:
    """Whether the result is of a ``no_log`` task (Ansible censors it; show nothing of it)."""
    res = (event.raw.get("event_data") or {}).get("res") or {}
    return bool(res.get("_ansible_no_log")) or "censored" in res


class RunnerSteps:
    """The real :class:`~.steps.Steps`: ansible-runner playbooks and Terraform."""

    def __init__(self, settings: RecoverySettings, *, runs_dir: Path | str) -> None:
        if settings.terraform is None or settings.ansible is None or settings.forensics is None:
            raise ValueError(f"recovery settings {settings.path}: backend {settings.backend} "
                             "has no terraform, ansible and forensics sections for the "
                             "runner steps")
        self.settings = settings
        self.runs_dir = Path(runs_dir)
        tf = settings.terraform
        self.terraform = Terraform(tf.root, data_dir=tf.data_dir, state_path=tf.state,
                                   binary=tf.binary, env=tf.env, cli_config_file=tf.cli_config,
                                   lock_timeout=tf.lock_timeout_s)
        self._env = {**os.environ, **settings.ansible.env}
        self._init_lock = threading.Lock()
        self._tf_lock = threading.Lock()
        self._initialized = False

    # -- the steps ------------------------------------------------------------------------
    def contain(self, ctx: StepContext) -> Mapping[str, Any]:
        node = _node(ctx.node_id)
        mode = self.settings.ansible.quarantine_mode
        self._play(ctx, "quarantine", {"aegis_target": node, "quarantine_mode": mode})
        return {"quarantine_mode": mode}

    def collect(self, ctx: StepContext) -> Mapping[str, Any]:
        node = _node(ctx.node_id)
        fx = self.settings.forensics
        if fx.skip or fx.dest is None or fx.recipient is None:
            ctx.progress(f"forensics skipped for {node}: forensics.skip is true in the "
                         "recovery settings", step="collect")
            return {"forensics_skipped": True}
        fx.dest.mkdir(parents=True, exist_ok=True, mode=0o700)
        manifest = fx.dest / f"{node}-{ctx.job_id}.json"
        bundle = fx.dest / f"{node}-{ctx.job_id}.tar.age"
        # A killed controller may have collected it already: a complete bundle is kept.
        if manifest.is_file() and bundle.is_file():
            try:
                found = self._bundle(ctx, manifest, bundle)
            except StepError:
                found = None
            if found is not None:
                ctx.progress(f"forensics bundle of {node} already collected", step="collect",
                             bundle_sha256=found["bundle_sha256"])
                return found
        self._play(ctx, "forensics", {
            "aegis_target": node, "forensics_recipient": fx.recipient,
            "forensics_dest": str(fx.dest), "forensics_incident": ctx.job_id})
        found = self._bundle(ctx, manifest, bundle)
        ctx.progress(f"forensics bundle of {node}: {found['bundle_bytes']} bytes, sha256 "
                     f"{found['bundle_sha256']}", step="collect",
                     bundle_sha256=found["bundle_sha256"], bundle_bytes=found["bundle_bytes"])
        return found

    def replace(self, ctx: StepContext) -> Mapping[str, Any]:
        node = _node(ctx.node_id)
        self._init(ctx)
        # One Terraform run on the root module at a time from this controller: concurrent
        # jobs (max_in_flight > 1) queue here instead of failing on the state lock after
        # lock_timeout_s (which still guards against other controllers and people).
        with self._terraform_turn(ctx):
            return self._replace(ctx, node, self.settings.terraform.address(node))

    def _replace(self, ctx: StepContext, node: str, address: str) -> Mapping[str, Any]:
        objects = self._objects(address)
        current = _current(objects)
        known_old = ctx.data.get("old_instance_id")
        if (known_old and current is not None and len(objects) == 1
                and not current.get("tainted") and current["id"] != known_old):
            ctx.progress(f"{address} was already replaced ({known_old} -> {current['id']}): "
                         "not replacing it again", step="replace",
                         old_instance_id=known_old, new_instance_id=current["id"])
            return {"old_instance_id": known_old, "new_instance_id": current["id"]}
        if current is None and not known_old:
            # An attempt killed after its destroy was saved, whose remembered old id is
            # lost, left no instance: create it again, but only if the configuration
            # declares it (an unknown node is refused).
            self._declared(ctx, address)
            ctx.progress(f"{address} has no instance (an earlier attempt destroyed it): "
                         "creating it", step="replace", address=address)
        old = known_old or (current["id"] if current is not None else None)
        ctx.remember(old_instance_id=old)  # before the destroy: a resumed attempt knows it
        ctx.progress(f"replacing {address} (instance {old})", step="replace",
                     old_instance_id=old, address=address)
        try:
            self.terraform.apply(
                self.settings.terraform.variables(),
                replace=[address] if current is not None else [],
                targets=[address] if current is None else [],
                on_event=self._tf_progress(ctx), timeout=self.settings.terraform.timeout_s,
                cancel=ctx.cancel, on_start=ctx.started_process)
        except TerraformCancelled as exc:
            raise StepCancelled(str(exc)) from None
        except TerraformFailure as exc:
            raise StepError(_one_line(str(exc))) from None
        objects = self._objects(address)
        current = _current(objects)
        if current is None or len(objects) != 1:
            raise StepError(f"after the replace the Terraform state holds {len(objects)} "
                            f"objects at {address} (expected exactly one): look at "
                            "`terraform state list` before retrying")
        if old is not None and current["id"] == old:
            raise StepError(f"terraform apply finished but {address} still has instance "
                            f"{old}: the resource was not replaced")
        ctx.progress(f"{address} replaced: {old} -> {current['id']}", step="replace",
                     old_instance_id=old, new_instance_id=current["id"])
        return {"old_instance_id": old, "new_instance_id": current["id"]}

    def verify(self, ctx: StepContext) -> Mapping[str, Any]:
        node = _node(ctx.node_id)
        baked = self.settings.baked
        result = self._play(ctx, "verify", {**self.settings.ansible.verify_vars(),
                                            "aegis_target": node}, check_mode=baked,
                            golden=True, tags=self.settings.ansible.verify_tags)
        assert result is not None
        play, golden = result
        if baked:
            drift = [e.task or "?" for e in play.results
                     if e.host == node and e.status == "changed"]
            if drift or play.changed:
                names = ", ".join(dict.fromkeys(drift)) or f"{play.changed} task(s)"
                raise StepError(_one_line(f"drift on a baked image: harden.yml in check mode "
                                          f"would change {names} on {node}"))
        return {"golden": golden, "verified": "check" if baked else "converge"}

    def enroll(self, ctx: StepContext, token_command: Sequence[str]) -> Mapping[str, Any]:
        node = _node(ctx.node_id)
        if not token_command or not all(isinstance(a, str) and a for a in token_command):
            raise StepError("enroll needs a token command (a command line that prints a "
                            "one-time bootstrap token for the node id appended to it)")
        extravars = {**self.settings.ansible.agent_vars(), "aegis_target": node,
                     "agent_bootstrap_token_command": shlex.join(token_command)}
        self._play(ctx, "enroll", extravars, timeout=self.settings.enroll_timeout_s)
        return {"enrolled": True}

    def dry_run(self, node_id: str) -> DryRun:
        node = _node(node_id)
        address = self.settings.terraform.address(node)
        self._init(None)
        if _current(self._objects(address)) is None:
            raise StepError(f"the Terraform state has no instance at {address}: check that "
                            f"node {node} is managed in {self.settings.terraform.root} and "
                            "that terraform.replace_address matches its resource")
        try:
            plan = self.terraform.plan(self.settings.terraform.variables(), replace=[address],
                                       timeout=self.settings.terraform.timeout_s)
        except TerraformFailure as exc:
            raise StepError(_one_line(str(exc))) from None
        lines = [*plan.lines,
                 *[f"planned: {action} {addr}" for addr, action in plan.planned]]
        return DryRun(node_id=node, terraform_plan=lines, playbooks=self.playbooks())

    def playbooks(self) -> list[str]:
        """The playbooks a recovery runs, in order, each with how it runs."""
        a = self.settings.ansible
        notes = {
            "quarantine.yml": f"quarantine_mode={a.quarantine_mode}",
            "forensics.yml": "skipped (forensics.skip)" if self.settings.forensics.skip
            else f"bundle to {self.settings.forensics.dest}",
            "harden.yml": "check mode, any change fails (baked)" if self.settings.baked
            else "converge",
            "agent.yml": "enroll with a one-time token",
        }
        return [f"{a.playbook(name)} ({notes[name]})" for name in PLAYBOOKS]

    # -- Terraform ------------------------------------------------------------------------
    def _init(self, ctx: StepContext | None) -> None:
        with self._init_lock:
            if self._initialized:
                return
            self.settings.terraform.data_dir.mkdir(parents=True, exist_ok=True)
            try:
                self.terraform.init(timeout=self.settings.terraform.timeout_s,
                                    cancel=ctx.cancel if ctx else None,
                                    on_start=ctx.started_process if ctx else None)
            except TerraformCancelled as exc:
                raise StepCancelled(str(exc)) from None
            except TerraformFailure as exc:
                raise StepError(_one_line(str(exc))) from None
            self._initialized = True

    @contextmanager
    def _terraform_turn(self, ctx: StepContext) -> Iterator[None]:
        if not self._tf_lock.acquire(blocking=False):
            ctx.progress("waiting for another replacement's Terraform run to finish",
                         step="replace")
            while not self._tf_lock.acquire(timeout=0.5):
                if ctx.cancel.is_set():
                    raise StepCancelled("cancelled while waiting for another replacement's "
                                        "Terraform run")
        try:
            yield
        finally:
            self._tf_lock.release()

    def _declared(self, ctx: StepContext, address: str) -> None:
        """Refuse an address the configuration does not declare (plan shows no create)."""
        try:
            plan = self.terraform.plan(self.settings.terraform.variables(), targets=[address],
                                       timeout=self.settings.terraform.timeout_s,
                                       cancel=ctx.cancel, on_start=ctx.started_process)
        except TerraformCancelled as exc:
            raise StepCancelled(str(exc)) from None
        except TerraformFailure as exc:
            raise StepError(_one_line(str(exc))) from None
        if (address, "create") not in plan.planned:
            raise StepError(f"the Terraform state has no instance at {address} and the "
                            f"configuration in {self.settings.terraform.root} declares none: "
                            "check the node id and that terraform.replace_address matches "
                            "its resource")

    def _objects(self, address: str) -> list[dict]:
        """Every object at ``address`` in the state as {id, tainted, deposed}."""
        try:
            found = self.terraform.state_resources(address,
                                                   timeout=self.settings.terraform.timeout_s)
        except TerraformFailure as exc:
            raise StepError(_one_line(str(exc))) from None
        return [{"id": str((r.get("values") or {}).get("id") or ""),
                 "tainted": bool(r.get("tainted")), "deposed": r.get("deposed_key")}
                for r in found]

    def _tf_progress(self, ctx: StepContext) -> Callable[[TerraformEvent], None]:
        def handle(event: TerraformEvent) -> None:
            if event.type in _TF_PROGRESS and event.message:
                ctx.progress(f"[terraform] {_one_line(event.message, 300)}", step="replace",
                             event=event.type)
        return handle

    # -- Ansible ---------------------------------------------------------------------------
    @contextmanager
    def _ansible(self, ctx: StepContext, label: str) -> Iterator[Ansible]:
        """An Ansible runner whose private dir is removed when the step ends."""
        where = self.runs_dir / f"{ctx.job_id}-{label}-{uuid.uuid4().hex[:8]}"
        try:
            yield Ansible(where, env=self._env, keep=1000, suppress_env_files=True)
        finally:
            shutil.rmtree(where, ignore_errors=True)

    def _play(self, ctx: StepContext, label: str, extravars: Mapping[str, Any], *,
              check_mode: bool = False, timeout: float | None = None,
              golden: bool = False, tags: str | None = None) -> Any:
        """Run the label's playbook limited to the node; with ``golden`` also read the
        node's golden record. Failures become one-line :class:`StepError`."""
        name = {"quarantine": "quarantine.yml", "forensics": "forensics.yml",
                "verify": "harden.yml", "enroll": "agent.yml"}[label]
        a = self.settings.ansible
        timeout = timeout or a.timeout_s
        handler = _PlayProgress(ctx, label)
        ctx.progress(f"[{label}] {name} on {ctx.node_id}"
                     + (" (check mode)" if check_mode else ""), step=label)
        with self._ansible(ctx, label) as ansible:
            try:
                result = ansible.run(a.playbook(name), extravars=dict(extravars),
                                     # localhost too: the recovery playbooks check their
                                     # inputs there first, and forensics.yml makes its
                                     # bundle directory there (--limit NODE skips them)
                                     limit=f"{ctx.node_id},localhost", inventory=a.inventory,
                                     on_event=handler, timeout=timeout, cancel=ctx.cancel,
                                     check_mode=check_mode, tags=tags)
                if not golden:
                    return result
                read = ansible.module(ctx.node_id, "ansible.builtin.slurp",
                                      f"src={a.golden_path}", inventory=a.inventory,
                                      on_event=_Groups(handler), timeout=timeout,
                                      cancel=ctx.cancel, check=True)
                return result, _golden(read, ctx.node_id, a.golden_path)
            except PlaybookCancelled as exc:
                raise StepCancelled(str(exc)) from None
            except PlaybookError as exc:
                raise StepError(_play_error(name, exc)) from None
            except PlaybookFailure as exc:
                raise StepError(_one_line(str(exc))) from None

    def _bundle(self, ctx: StepContext, manifest: Path, bundle: Path) -> dict[str, Any]:
        """The bundle's path, hash and size, checked against the manifest the play wrote."""
        try:
            meta = json.loads(manifest.read_text())
        except (OSError, ValueError) as exc:
            raise StepError(f"the forensics manifest {manifest} is missing or not JSON "
                            f"({type(exc).__name__}): forensics.yml did not finish") from None
        if not isinstance(meta, dict) or meta.get("node") != ctx.node_id \
                or meta.get("incident") != ctx.job_id:
            raise StepError(f"the forensics manifest {manifest} is not for node "
                            f"{ctx.node_id} and incident {ctx.job_id}")
        digest = hashlib.sha256()
        size = 0
        try:
            with bundle.open("rb") as fh:
                head = fh.read(len(AGE_HEADER))
                digest.update(head)
                size += len(head)
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
                    size += len(chunk)
        except OSError as exc:
            raise StepError(f"the forensics bundle {bundle} cannot be read: "
                            f"{exc.strerror}") from None
        if head != AGE_HEADER:
            raise StepError(f"the forensics bundle {bundle} is not age-encrypted: refusing it")
        sha = digest.hexdigest()
        if meta.get("sha256") != sha or meta.get("bytes") != size:
            raise StepError(f"the forensics bundle {bundle} does not match its manifest "
                            f"(sha256 {sha}, {size} bytes; manifest says "
                            f"{meta.get('sha256')}, {meta.get('bytes')} bytes)")
        return {"bundle_path": str(bundle), "bundle_sha256": sha, "bundle_bytes": size,
                "bundle_collected_at": meta.get("collected_at")}


class _PlayProgress:
    """Task events to ``ctx.progress`` (a no_log task's result without its message), and
    ansible-playbook's process group to ``ctx.started_process`` once it is known."""

    def __init__(self, ctx: StepContext, label: str) -> None:
        self.ctx = ctx
        self.label = label
        self.tasks = 0
        self.reported: set[int] = set()
        self.pids: set[int] = set()

    def __call__(self, event: PlayEvent) -> None:
        pid = event.raw.get("pid")
        if isinstance(pid, int) and pid > 0 and pid not in self.pids:
            self.pids.add(pid)
            try:
                pgid = os.getpgid(pid)
            except ProcessLookupError:
                pgid = pid
            if pgid not in self.reported:
                self.reported.add(pgid)
                self.ctx.started_process(pgid)
        if event.is_task_start:
            self.tasks += 1
            return
        if not event.is_result:
            return
        if _hidden(event):
            event = dataclasses.replace(event, message="")
        line = progress_line(self.label, event, self.tasks)
        if line is not None:
            self.ctx.progress(_one_line(line), step=self.label, host=event.host,
                              task=event.task, status=event.status)


class _Groups:
    """Only the process-group reporting of a :class:`_PlayProgress` (the golden record's
    content must not reach the progress lines)."""

    def __init__(self, progress: _PlayProgress) -> None:
        self.progress = progress

    def __call__(self, event: PlayEvent) -> None:
        self.progress(dataclasses.replace(event, kind="", status=None))


def _node(node_id: str) -> str:
    if not isinstance(node_id, str) or not NODE_ID.match(node_id):
        raise StepError(f"node id {node_id!r} is not a valid node name (letters, digits, "
                        "'.', '_', '-'; at most 63)")
    return node_id


def _current(objects: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    current = [dict(o) for o in objects if not o.get("deposed")]
    return current[0] if current else None


def _play_error(playbook: str, exc: PlaybookError) -> str:
    """The failure in one line; a no_log task's message is not shown."""
    message = exc.message
    first = exc.result.failures[0] if exc.result and exc.result.failures else None
    if first is not None and _hidden(first):
        message = "(output hidden: no_log)"
    return _one_line(f"{playbook}: task {exc.task!r} failed on {exc.host}: {message}")


def _golden(read: PlayResult, node: str, path: str) -> str:
    res = read.per_host().get(node) or {}
    try:
        text = base64.b64decode(res["content"]).decode()
        data = json.loads(text)
    except (KeyError, ValueError, TypeError):
        raise StepError(f"the golden record {path} on {node} is missing or not JSON: the "
                        "harden role writes it; converge it first") from None
    if not isinstance(data, dict):
        raise StepError(f"the golden record {path} on {node} is not a JSON object")
    return text
