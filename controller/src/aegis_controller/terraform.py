"""Run Terraform through its own machine-readable interface.

``init``, ``plan``, ``apply`` (also with ``-replace``), ``destroy``, ``output`` and
``show`` are run with ``-json``; every line Terraform prints is parsed into a
:class:`TerraformEvent` and handed to the caller as it arrives, so long applies show
progress. A run can be given a timeout or a cancel event: Terraform then gets SIGINT (it
stops cleanly and writes its state), and if it has not exited after a grace period its
whole process group is killed. Terraform runs in a process group of its own (its id is
Terraform's pid), which ``on_start`` is told before the run is waited on, so a caller can
record it and kill what is left of it if the caller itself dies. Failures raise
:class:`TerraformError` carrying Terraform's own diagnostics.

Why not ``python-terraform``: 0.10.1 passes ``-force`` to ``destroy`` (removed in
Terraform 0.15) and parses human output; this module uses only documented flags and
the JSON UI.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

EventHandler = Callable[["TerraformEvent"], None]
StartHandler = Callable[[int], None]

#: Seconds Terraform gets to stop after SIGINT before its process group is killed.
INTERRUPT_GRACE = 20.0


class TerraformFailure(Exception):
    """Base of every error this module raises."""


class TerraformNotFound(TerraformFailure):
    """The terraform binary is missing or does not run."""


class TerraformError(TerraformFailure):
    """Terraform exited non-zero; ``diagnostics`` holds its error diagnostics."""

    def __init__(self, verb: str, returncode: int, diagnostics: list[dict], stderr: str = ""):
        self.verb = verb
        self.returncode = returncode
        self.diagnostics = diagnostics
        self.stderr = stderr
        details = [_format_diagnostic(d) for d in diagnostics if d.get("severity") == "error"]
        if not details and stderr.strip():
            details = [stderr.strip().splitlines()[-1]]
        summary = "; ".join(details) or "no diagnostic was printed"
        super().__init__(f"terraform {verb} failed (exit {returncode}): {summary}")


class TerraformTimeout(TerraformFailure):
    """The run took longer than its timeout and was stopped."""


class TerraformCancelled(TerraformFailure):
    """The caller cancelled the run and it was stopped."""


@dataclass(frozen=True)
class TerraformEvent:
    """One line of Terraform's JSON UI (``type`` is e.g. ``apply_complete``)."""

    type: str
    level: str
    message: str
    raw: dict

    @classmethod
    def parse(cls, line: str) -> TerraformEvent:
        """Parse one output line; a line that is not JSON becomes a ``text`` event."""
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            data = None
        if not isinstance(data, dict):
            return cls("text", "info", line.rstrip("\n"), {})
        return cls(
            type=str(data.get("type", "log")),
            level=str(data.get("@level", "info")),
            message=str(data.get("@message", "")),
            raw=data,
        )

    @property
    def diagnostic(self) -> dict | None:
        return self.raw.get("diagnostic") if self.type == "diagnostic" else None


@dataclass
class ApplyResult:
    """What an apply or destroy did."""

    events: list[TerraformEvent]
    changes: dict = field(default_factory=dict)
    outputs: dict = field(default_factory=dict)
    duration: float = 0.0

    @property
    def resources(self) -> list[tuple[str, str]]:
        """(address, action) of every resource change that completed."""
        return _actions(self.events, "apply_complete", "hook")


@dataclass
class PlanResult:
    """What a plan would do: the change summary and each planned (address, action)."""

    events: list[TerraformEvent]
    changes: dict = field(default_factory=dict)
    summary: str = ""

    @property
    def planned(self) -> list[tuple[str, str]]:
        """(address, action) of every planned resource change, e.g. ``("a.b", "replace")``."""
        return _actions(self.events, "planned_change", "change")

    @property
    def lines(self) -> list[str]:
        """The plan as a person reads it: one line per planned change, then the summary."""
        return [ev.message for ev in self.events if ev.type == "planned_change"] + (
            [self.summary] if self.summary else [])


def _actions(events: Iterable[TerraformEvent], event_type: str,
             key: str) -> list[tuple[str, str]]:
    """(resource address, action) from each ``event_type`` event's ``key`` object."""
    out = []
    for ev in events:
        if ev.type == event_type:
            item = ev.raw.get(key, {})
            out.append((item.get("resource", {}).get("addr", ""), item.get("action", "")))
    return out


def _format_diagnostic(diag: Mapping) -> str:
    text = str(diag.get("summary", "")).strip()
    detail = str(diag.get("detail", "")).strip()
    if detail:
        text = f"{text}: {detail}" if text else detail
    rng = diag.get("range")
    if isinstance(rng, dict) and rng.get("filename"):
        text += f" ({rng['filename']}:{rng.get('start', {}).get('line', '?')})"
    return text


def check_terraform(binary: str = "terraform") -> str:
    """Return the installed Terraform version or raise TerraformNotFound saying how to fix it."""
    path = shutil.which(binary)
    if not path:
        raise TerraformNotFound(
            f"'{binary}' is not on PATH: install Terraform >= 1.5 "
            "(https://developer.hashicorp.com/terraform/install) and run again"
        )
    proc = subprocess.run([path, "version", "-json"], capture_output=True, text=True,
                          check=False, env=_base_env(None, None, None))
    if proc.returncode != 0:
        raise TerraformNotFound(f"'{path} version' failed: {proc.stderr.strip()}")
    return json.loads(proc.stdout)["terraform_version"]


def _base_env(env: Mapping[str, str] | None, cli_config_file: Path | None,
              data_dir: Path | None) -> dict[str, str]:
    merged = dict(os.environ)
    merged.update(env or {})
    merged.update({"CHECKPOINT_DISABLE": "1", "TF_IN_AUTOMATION": "1", "TF_INPUT": "0"})
    # Terraform reads ~/.terraformrc when this is unset; the project never depends on it.
    merged["TF_CLI_CONFIG_FILE"] = str(cli_config_file) if cli_config_file else os.devnull
    if data_dir:
        merged["TF_DATA_DIR"] = str(data_dir)
    return merged


class Terraform:
    """One Terraform root module with its own data dir and local state file.

    ``state_path`` is passed to ``init`` as ``-backend-config=path=...``, so the module
    must declare ``terraform { backend "local" {} }`` for it to take effect.
    """

    def __init__(self, working_dir: Path | str, *, data_dir: Path | str | None = None,
                 state_path: Path | str | None = None, binary: str = "terraform",
                 env: Mapping[str, str] | None = None,
                 cli_config_file: Path | str | None = None,
                 lock_timeout: float = 60) -> None:
        self.working_dir = Path(working_dir)
        self.data_dir = Path(data_dir) if data_dir else None
        self.state_path = Path(state_path) if state_path else None
        self.binary = binary
        self.cli_config_file = Path(cli_config_file) if cli_config_file else None
        self.env = _base_env(env, self.cli_config_file, self.data_dir)
        #: How long plan and apply wait for the state lock held by another run.
        self.lock_timeout = lock_timeout

    # -- verbs ------------------------------------------------------------------------
    def version(self) -> str:
        return check_terraform(self.binary)

    def init(self, *, on_event: EventHandler | None = None, timeout: float | None = 300,
             cancel: threading.Event | None = None,
             on_start: StartHandler | None = None) -> list[TerraformEvent]:
        """``terraform init`` (local backend at ``state_path`` when one is given)."""
        args = ["init", "-json", "-input=false", "-no-color"]
        if self.state_path:
            args.append(f"-backend-config=path={self.state_path}")
        return self._run("init", args, on_event, timeout, cancel, on_start)

    def plan(self, variables: Mapping[str, object] | None = None, *,
             replace: Iterable[str] = (), targets: Iterable[str] = (),
             on_event: EventHandler | None = None, timeout: float | None = None,
             cancel: threading.Event | None = None,
             on_start: StartHandler | None = None) -> PlanResult:
        """``terraform plan`` (nothing applied, no plan file); ``replace`` and ``targets``
        as for apply."""
        args = ["plan", "-json", "-input=false", "-no-color",
                f"-lock-timeout={self._lock_timeout()}",
                *[f"-replace={addr}" for addr in replace], *[f"-target={t}" for t in targets]]
        events = self._with_var_file("plan", args, variables, on_event, timeout, cancel,
                                     on_start)
        result = PlanResult(events=events)
        for ev in events:
            if ev.type == "change_summary":
                result.changes = ev.raw.get("changes", {})
                result.summary = ev.message
        return result

    def apply(self, variables: Mapping[str, object] | None = None, *,
              replace: Iterable[str] = (), targets: Iterable[str] = (),
              on_event: EventHandler | None = None, timeout: float | None = None,
              cancel: threading.Event | None = None,
              on_start: StartHandler | None = None) -> ApplyResult:
        """``terraform apply -auto-approve``; ``replace`` lists addresses to re-create."""
        extra = [f"-replace={addr}" for addr in replace] + [f"-target={t}" for t in targets]
        return self._apply("apply", extra, variables, on_event, timeout, cancel, on_start)

    def destroy(self, variables: Mapping[str, object] | None = None, *,
                on_event: EventHandler | None = None, timeout: float | None = None,
                cancel: threading.Event | None = None,
                on_start: StartHandler | None = None) -> ApplyResult:
        """``terraform apply -destroy -auto-approve`` (never the removed ``-force``)."""
        return self._apply("destroy", ["-destroy"], variables, on_event, timeout, cancel,
                           on_start)

    def output(self, *, timeout: float | None = 120) -> dict[str, object]:
        """All root outputs as ``{name: value}`` (``terraform output -json``)."""
        data = self._json("output", timeout)
        return {name: spec.get("value") for name, spec in data.items()}

    def show(self, *, timeout: float | None = 120) -> dict:
        """The current state as ``terraform show -json`` prints it (``{}``-like with no
        ``values`` when the state is empty)."""
        return self._json("show", timeout)

    def state_resources(self, address: str, *, timeout: float | None = 120) -> list[dict]:
        """Every object the state holds at ``address`` (a resource instance address such as
        ``module.node["n1"].aws_instance.this``), in any module, deposed objects included:
        one entry normally, none when it does not exist, more after an interrupted
        create-before-destroy. Each is ``show -json``'s resource (``values`` holds ``id``)."""
        return [r for r in _state_resources(self.show(timeout=timeout).get("values") or {})
                if r.get("address") == address]

    def state_resource(self, address: str, *, timeout: float | None = 120) -> dict | None:
        """The ``values`` of the one current object at ``address``, or None if absent."""
        current = [r for r in self.state_resources(address, timeout=timeout)
                   if not r.get("deposed_key")]
        return dict(current[0].get("values") or {}) if current else None

    # -- machinery ------------------------------------------------------------------------
    def _json(self, verb: str, timeout: float | None) -> dict:
        """``terraform <verb> -json`` read whole (a JSON object, else TerraformError)."""
        proc = self._capture([verb, "-json", "-no-color"], timeout)
        if proc.returncode != 0:
            raise TerraformError(verb, proc.returncode, [], proc.stderr)
        try:
            data = json.loads(proc.stdout or "{}")
        except json.JSONDecodeError as exc:
            raise TerraformError(verb, 0, [], f"{verb} -json is not JSON: {exc}") from None
        return data if isinstance(data, dict) else {}

    def _apply(self, verb: str, extra: list[str], variables: Mapping[str, object] | None,
               on_event: EventHandler | None, timeout: float | None,
               cancel: threading.Event | None,
               on_start: StartHandler | None = None) -> ApplyResult:
        started = time.monotonic()
        args = ["apply", "-json", "-input=false", "-no-color", "-auto-approve",
                f"-lock-timeout={self._lock_timeout()}", *extra]
        events = self._with_var_file(verb, args, variables, on_event, timeout, cancel,
                                     on_start)
        result = ApplyResult(events=events, duration=time.monotonic() - started)
        for ev in events:
            if ev.type == "change_summary":
                result.changes = ev.raw.get("changes", {})
            elif ev.type == "outputs":
                result.outputs = {k: v.get("value") for k, v in ev.raw.get("outputs", {}).items()}
        return result

    def _lock_timeout(self) -> str:
        return f"{max(0, math.ceil(self.lock_timeout))}s"

    def _with_var_file(self, verb: str, args: list[str],
                       variables: Mapping[str, object] | None, on_event: EventHandler | None,
                       timeout: float | None, cancel: threading.Event | None,
                       on_start: StartHandler | None) -> list[TerraformEvent]:
        var_file = None
        try:
            if variables is not None:
                var_file = self._write_var_file(variables)
                args = [*args, f"-var-file={var_file}"]
            return self._run(verb, args, on_event, timeout, cancel, on_start)
        finally:
            if var_file:
                var_file.unlink(missing_ok=True)

    def _write_var_file(self, variables: Mapping[str, object]) -> Path:
        where = self.data_dir or Path(tempfile.gettempdir())
        where.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="run-", suffix=".tfvars.json", dir=where)
        with os.fdopen(fd, "w") as fh:
            json.dump(dict(variables), fh)
        return Path(name)

    def _command(self, args: list[str]) -> list[str]:
        return [self.binary, f"-chdir={self.working_dir}", *args]

    def _capture(self, args: list[str], timeout: float | None) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(self._command(args), capture_output=True, text=True,
                                  env=self.env, timeout=timeout, check=False)
        except FileNotFoundError:
            check_terraform(self.binary)
            raise
        except subprocess.TimeoutExpired:
            raise TerraformTimeout(f"terraform {args[0]} did not finish in {timeout} s") from None

    def _run(self, verb: str, args: list[str], on_event: EventHandler | None,
             timeout: float | None, cancel: threading.Event | None,
             on_start: StartHandler | None = None) -> list[TerraformEvent]:
        try:
            proc = subprocess.Popen(
                self._command(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL, text=True, env=self.env, start_new_session=True,
            )
        except FileNotFoundError:
            check_terraform(self.binary)
            raise
        if on_start is not None:
            try:
                on_start(proc.pid)  # start_new_session: the group's id is the pid
            except BaseException:
                _stop(proc, grace=2.0)
                raise
        stderr_chunks: list[str] = []
        err_reader = threading.Thread(target=_collect, args=(proc.stderr, stderr_chunks),
                                      daemon=True)
        err_reader.start()
        deadline = time.monotonic() + timeout if timeout else None
        events: list[TerraformEvent] = []
        try:
            stop_reason = _follow(proc, events, on_event, deadline, cancel)
        except BaseException:
            _stop(proc, grace=2.0)
            raise
        finally:
            err_reader.join(timeout=5)
        if stop_reason == "cancel":
            raise TerraformCancelled(f"terraform {verb} was cancelled; Terraform was stopped")
        if stop_reason == "timeout":
            raise TerraformTimeout(
                f"terraform {verb} did not finish in {timeout} s and was stopped; "
                "raise the timeout or look at what the provisioners wait for"
            )
        if proc.returncode != 0:
            diags = [ev.diagnostic for ev in events if ev.diagnostic]
            raise TerraformError(verb, proc.returncode, diags, "".join(stderr_chunks))
        return events


def _follow(proc: subprocess.Popen, events: list[TerraformEvent],
            on_event: EventHandler | None, deadline: float | None,
            cancel: threading.Event | None) -> str | None:
    """Collect events until Terraform exits; stop it on cancel or deadline.

    Returns ``"cancel"``, ``"timeout"`` or None (Terraform exited by itself).
    """
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
    stop_reason: str | None = None
    exited_at: float | None = None
    while True:
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            # A leftover grandchild may hold the pipe open after Terraform exits.
            if proc.poll() is not None:
                exited_at = exited_at or time.monotonic()
                if time.monotonic() - exited_at > 2.0:
                    break
            line = ""
        if line is None:
            break
        if line:
            ev = TerraformEvent.parse(line)
            events.append(ev)
            if on_event:
                on_event(ev)
        if stop_reason is None:
            if cancel is not None and cancel.is_set():
                stop_reason = "cancel"
            elif deadline is not None and time.monotonic() > deadline:
                stop_reason = "timeout"
            if stop_reason:
                _stop(proc)
    proc.wait()
    return stop_reason


def _state_resources(module: Mapping) -> Iterable[dict]:
    """Every resource of ``module`` (show -json's ``root_module``) and its child modules."""
    root = module.get("root_module", module)
    stack = [root]
    while stack:
        current = stack.pop()
        yield from current.get("resources") or []
        stack.extend(current.get("child_modules") or [])


def _pump(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def _collect(stream, chunks: list[str]) -> None:
    for line in stream:
        chunks.append(line)


def _stop(proc: subprocess.Popen, grace: float = INTERRUPT_GRACE) -> None:
    """SIGINT Terraform's process group (it saves state), SIGKILL it after ``grace``."""
    if proc.poll() is not None:
        _kill_group(proc.pid)
        return
    try:
        os.killpg(proc.pid, signal.SIGINT)
    except ProcessLookupError:
        return
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    _await_group_gone(proc.pid)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    _await_group_gone(pgid)


def _await_group_gone(pgid: int, wait: float = 5.0) -> None:
    """Wait (up to ``wait`` s) until nothing of the group is left, so no provisioner
    outlives a cancelled or timed-out run when the call returns. Call it only after
    Terraform itself has been waited for (an unreaped child still counts)."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.02)
