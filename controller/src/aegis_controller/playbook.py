"""Run Ansible (playbooks and single modules) through ansible-runner, with typed events.

The counterpart of ``terraform.py`` for Ansible: :class:`Ansible` runs a playbook
(``run``, or ``run_async`` in a thread) or one module ad hoc (``module``), hands every
task result to ``on_event`` as a :class:`PlayEvent` while the play runs, can be given a
``timeout`` or a ``cancel`` event, and returns a :class:`PlayResult` built from the
runner's own stats (per host) and its failed task results, never from screen output.
A failed run raises a :class:`PlaybookFailure` naming the failing host, task and message.

Each run gets its own private data dir under ``runs_dir`` (the caller's state directory,
never the source tree); the environment handed to ansible-playbook (collections path,
``ANSIBLE_CONFIG``, inventory ...) is the caller's. Unlike ansible-runner's default, host
key checking stays on unless that environment sets ``ANSIBLE_HOST_KEY_CHECKING``.

With a :class:`Container` the runs happen inside an execution environment (EE) image
through ansible-runner's container mode, the way AWX runs jobs: the playbook's directory
is mounted read-only as the project, an inventory file is copied into the private data
dir, and only the variables in which the given environment differs from this process's
go into the container. The container engine itself runs with this process's environment
(``CONTAINERS_CONF`` and the like belong there, not in the run's environment).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ansible_runner

from .processes import kill_tree

EventHandler = Callable[["PlayEvent"], None]

#: runner event name -> task status (``runner_on_ok`` becomes ``changed`` when it changed).
_STATUS = {
    "runner_on_ok": "ok",
    "runner_on_failed": "failed",
    "runner_on_unreachable": "unreachable",
    "runner_on_skipped": "skipped",
    "runner_on_async_failed": "failed",
}


class PlaybookFailure(Exception):
    """Base of every error this module raises."""


class PlaybookNotFound(PlaybookFailure):
    """The playbook file does not exist."""


class PlaybookError(PlaybookFailure):
    """A task failed (or a host was unreachable): the first such result, by host and task."""

    def __init__(self, what: str, host: str, task: str, message: str,
                 result: PlayResult | None = None) -> None:
        self.host = host
        self.task = task
        self.message = message
        self.result = result
        super().__init__(f"{what}: task {task!r} failed on {host}: {message}")


class PlaybookTimeout(PlaybookFailure):
    """The run did not finish within its timeout and was stopped."""


class PlaybookCancelled(PlaybookFailure):
    """The run was cancelled by the caller and was stopped."""


@dataclass(frozen=True)
class PlayEvent:
    """One event of a run: a task starting (``status`` None) or one host's task result."""

    kind: str
    counter: int
    host: str | None = None
    task: str | None = None
    status: str | None = None
    message: str = ""
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> PlayEvent:
        kind = str(data.get("event", ""))
        ev = data.get("event_data") or {}
        res = ev.get("res") or {}
        status = _STATUS.get(kind)
        if status == "ok" and res.get("changed"):
            status = "changed"
        if status == "failed" and ev.get("ignore_errors"):
            status = "ignored"
        message = res.get("msg") or res.get("stderr") or res.get("reason") or ""
        return cls(kind=kind, counter=int(data.get("counter") or 0), host=ev.get("host"),
                   task=ev.get("task") or None, status=status, message=str(message).strip(),
                   raw=data)

    @property
    def is_task_start(self) -> bool:
        return self.kind == "playbook_on_task_start"

    @property
    def is_result(self) -> bool:
        return self.status is not None

    @property
    def is_failure(self) -> bool:
        return self.status in ("failed", "unreachable")


@dataclass(frozen=True)
class HostStats:
    """The play recap of one host."""

    ok: int = 0
    changed: int = 0
    failures: int = 0
    unreachable: int = 0
    skipped: int = 0
    rescued: int = 0
    ignored: int = 0


@dataclass
class PlayResult:
    """What a run left: its status and rc, stats per host, every task result, the failures."""

    status: str
    rc: int
    stats: dict[str, HostStats]
    results: list[PlayEvent]
    artifact_dir: Path | None = None

    @property
    def ok(self) -> bool:
        return self.status == "successful"

    @property
    def failures(self) -> list[PlayEvent]:
        return [e for e in self.results if e.is_failure]

    @property
    def changed(self) -> int:
        """Task results that changed something, over all hosts."""
        return sum(st.changed for st in self.stats.values())

    @property
    def stdout(self) -> str:
        """What Ansible printed (kept by the runner in the artifacts; for people and for
        checks that something was *not* printed, never parsed for results)."""
        path = self.artifact_dir / "stdout" if self.artifact_dir else None
        return path.read_text(errors="replace") if path and path.is_file() else ""

    def tail(self, lines: int = 15) -> str:
        """The last lines Ansible printed (errors before any task ran: syntax, inventory)."""
        return "\n".join(self.stdout.strip().splitlines()[-lines:]) or "no output"

    def per_host(self) -> dict[str, dict]:
        """``{host: result dict}`` of the last result per host (for one-task module runs)."""
        out: dict[str, dict] = {}
        for e in self.results:
            if e.host:
                out[e.host] = dict((e.raw.get("event_data") or {}).get("res") or {})
        return out


def stats_from(raw: Mapping[str, Mapping[str, int]] | None) -> dict[str, HostStats]:
    """Turn ansible-runner's stats (``{"ok": {host: n}, "dark": ..., ...}``) into one
    :class:`HostStats` per host."""
    if not raw:
        return {}
    names = {"ok": "ok", "changed": "changed", "failures": "failures", "dark": "unreachable",
             "skipped": "skipped", "rescued": "rescued", "ignored": "ignored"}
    hosts = sorted({h for key in names for h in (raw.get(key) or {})}
                   | set(raw.get("processed") or {}))
    return {h: HostStats(**{field_: int((raw.get(key) or {}).get(h, 0))
                            for key, field_ in names.items()}) for h in hosts}


class PlayRun:
    """A run started by :meth:`Ansible.run_async`: ``wait()`` returns its result."""

    def __init__(self, thread: threading.Thread, holder: dict[str, Any]) -> None:
        self._thread = thread
        self._holder = holder

    def done(self) -> bool:
        return not self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> PlayResult:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise PlaybookTimeout("the run is still going")
        if "error" in self._holder:
            raise self._holder["error"]
        return self._holder["result"]


@dataclass(frozen=True)
class Container:
    """Run inside an execution environment image (ansible-runner's container mode)."""

    image: str
    executable: str = "podman"
    #: extra ``podman run`` options, e.g. ``("--network=host", "--label=k=v")``
    options: tuple[str, ...] = ()
    #: start of each run's ident, so its container is ``ansible_runner_<prefix><hex>``
    ident_prefix: str = ""


def _forget_environment(private: Path) -> None:
    """Remove every copy of the run's environment the runner wrote: ``env/``, the
    ``env.list`` container mode hands to ``podman run --env-file``, a fact cache (facts
    hold ``ansible_env``; runs keep facts in memory, this is for a runner that did not) and
    the ``env`` of each
    ``artifacts/<id>/command`` (the whole environment, inherited variables too, so a token
    in the caller's environment would stay on disk). The command and its working directory
    stay for people reading the artifacts."""
    shutil.rmtree(private / "env", ignore_errors=True)
    for env_list in private.glob("artifacts/*/env.list"):
        env_list.unlink(missing_ok=True)
    for cache in private.glob("artifacts/*/fact_cache"):
        shutil.rmtree(cache, ignore_errors=True)
    for command in private.glob("artifacts/*/command"):
        try:
            data = json.loads(command.read_text())
        except (OSError, ValueError):
            command.unlink(missing_ok=True)
            continue
        if isinstance(data, dict) and "env" in data:
            data.pop("env")
            command.write_text(json.dumps(data))


#: in each run's private data dir: held locked while the run lasts
RUN_LOCK = ".aegis-run.lock"


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:  # removed by another process meanwhile
        return 0.0


def _remove_if_done(run: Path, grace: float) -> None:
    """Remove the private data dir ``run`` unless its run is still going (its lock is held)
    or ended less than ``grace`` seconds ago. Dirs without a lock file are from before
    the lock existed: removed as before."""
    try:
        fd = os.open(run / RUN_LOCK, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        shutil.rmtree(run, ignore_errors=True)
        return
    except OSError:
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # still running
        if time.time() - os.fstat(fd).st_mtime < grace:
            return
        shutil.rmtree(run, ignore_errors=True)
    finally:
        os.close(fd)


class Ansible:
    """Ansible runs with one environment, each in its own private data dir under
    ``runs_dir`` (the last ``keep`` kept for inspection)."""

    def __init__(self, runs_dir: Path, *, env: Mapping[str, str] | None = None,
                 keep: int = 20, grace: float = 600.0, suppress_env_files: bool = False,
                 container: Container | None = None) -> None:
        self.runs_dir = Path(runs_dir)
        self.env = dict(os.environ if env is None else env)
        self.keep = keep
        self.grace = grace
        #: ansible-runner's ``suppress_env_files``: the environment and extra vars are not
        #: written under ``env/`` while the run lasts (extra vars go on the command line).
        self.suppress_env_files = suppress_env_files
        #: run inside this execution environment image instead of on this host
        self.container = container

    # -- public -------------------------------------------------------------------------
    def run(self, playbook: Path, *, extravars: Mapping[str, Any] | None = None,
            extra_files: Sequence[Path] = (), limit: str | None = None,
            tags: str | None = None, inventory: Path | None = None,
            on_event: EventHandler | None = None, timeout: float | None = None,
            cancel: threading.Event | None = None, check: bool = True,
            check_mode: bool = False) -> PlayResult:
        """Run ``playbook``; with ``check`` a failed task raises :class:`PlaybookError`;
        ``check_mode`` runs it with ``--check`` (nothing changed, changes reported)."""
        playbook = Path(playbook)
        if not playbook.is_file():
            raise PlaybookNotFound(f"playbook {playbook} not found")
        container_args: dict[str, Any] = {}
        if self.container is not None:
            project = playbook.resolve().parent
            inside = []
            for f in extra_files:
                try:
                    inside.append(Path("/runner/project") / Path(f).resolve().relative_to(project))
                except ValueError:
                    raise PlaybookFailure(
                        f"extra vars file {f} is outside {project}, the directory mounted "
                        "into the execution environment: put it beside the playbook") from None
            extra_files = inside
            container_args["container_volume_mounts"] = [f"{project}:/runner/project:ro"]
            playbook = Path(playbook.name)
        cmdline = [arg for f in extra_files for arg in ("-e", f"@{f}")]
        if check_mode:
            cmdline.append("--check")
        if tags:
            cmdline += ["--tags", tags]
        return self._run(f"playbook {playbook.name}", check, on_event, timeout, cancel,
                         playbook=str(playbook), extravars=dict(extravars or {}),
                         limit=limit, inventory=inventory,
                         cmdline=shlex.join(cmdline) if cmdline else None, **container_args)

    def run_async(self, playbook: Path, **kwargs: Any) -> PlayRun:
        """Start :meth:`run` in a thread; the returned :class:`PlayRun` waits for it."""
        holder: dict[str, Any] = {}

        def target() -> None:
            try:
                holder["result"] = self.run(playbook, **kwargs)
            except BaseException as exc:
                holder["error"] = exc

        thread = threading.Thread(target=target, name=f"ansible-{Path(playbook).stem}",
                                  daemon=True)
        thread.start()
        return PlayRun(thread, holder)

    def module(self, pattern: str, module: str, args: str = "", *,
               inventory: Path | None = None, on_event: EventHandler | None = None,
               timeout: float | None = None, cancel: threading.Event | None = None,
               check: bool = False) -> PlayResult:
        """Run one module ad hoc on ``pattern``; ``result.per_host()`` holds each host's
        result. Failed hosts do not raise unless ``check``."""
        return self._run(f"{module} on {pattern}", check, on_event, timeout, cancel,
                         host_pattern=pattern, module=module, module_args=args or None,
                         inventory=inventory)

    # -- internals ------------------------------------------------------------------------
    def _private_dir(self) -> tuple[Path, int]:
        """A new private data dir, locked (the lock held until :meth:`_release`), after
        removing the oldest beyond ``keep``. Several processes share a runs dir (the tests'
        lanes, the controller and ``aegis-lab``): a run still going, or one finished less
        than ``grace`` seconds ago (its caller may still read its artifacts), is never
        removed, whoever started it."""
        self.runs_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        runs = sorted((p for p in self.runs_dir.iterdir() if not p.name.startswith(".")),
                      key=_mtime)
        for old in runs[:max(0, len(runs) - self.keep + 1)]:
            _remove_if_done(old, self.grace)
        # made under a hidden name with its lock taken, then renamed: no other process
        # sees it unlocked
        staging = Path(tempfile.mkdtemp(prefix=".new-", dir=self.runs_dir))
        fd = os.open(staging / RUN_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        path = self.runs_dir / f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        staging.rename(path)
        return path, fd

    @staticmethod
    def _release(private: Path, fd: int) -> None:
        """The run is over: its lock file's time starts the grace period."""
        with contextlib.suppress(OSError):
            os.utime(private / RUN_LOCK)
        os.close(fd)

    def _place(self, private: Path, ident: str, inventory: Path | None,
               envvars: dict[str, str], kwargs: dict[str, Any]) -> None:
        """Where the run happens: on this host with its inventory, or in the container."""
        container = self.container
        if container is None:
            if inventory is not None:
                kwargs["inventory"] = str(inventory)
            elif "ANSIBLE_INVENTORY" in self.env:
                kwargs["inventory"] = self.env["ANSIBLE_INVENTORY"]
            return
        # An EE runs as its own user (ansible-builder's default: uid 1000, group root), not
        # as this process's: the private data dir (mounted as /runner) and the artifacts
        # dir the play writes its events to are opened to the root group, nothing more.
        artifacts = private / "artifacts" / ident
        for path in (private, artifacts.parent, artifacts, artifacts / "job_events"):
            path.mkdir(exist_ok=True)
            path.chmod(0o770)
        # the host's files are not in the container: the inventory goes into the private
        # data dir, where the runner looks for it, under its own name (an inventory
        # plugin's source is recognised by its name, e.g. ``*.aegis_fleet.yml``; the paths
        # in it must be the container's)
        source = inventory or self.env.get("ANSIBLE_INVENTORY")
        if source:
            (private / "inventory").mkdir()
            (private / "inventory").chmod(0o750)
            placed = private / "inventory" / Path(source).name
            shutil.copy(source, placed)
            placed.chmod(0o640)
        envvars.pop("ANSIBLE_INVENTORY", None)
        kwargs.update(process_isolation=True, process_isolation_executable=container.executable,
                      container_image=container.image,
                      container_options=list(container.options))

    def _run(self, what: str, check: bool, on_event: EventHandler | None,
             timeout: float | None, cancel: threading.Event | None,
             inventory: Path | None = None, **kwargs: Any) -> PlayResult:
        private, lock = self._private_dir()
        try:
            return self._run_in(private, what, check, on_event, timeout, cancel,
                                inventory, **kwargs)
        finally:
            self._release(private, lock)

    def _run_in(self, private: Path, what: str, check: bool,
                on_event: EventHandler | None, timeout: float | None,
                cancel: threading.Event | None, inventory: Path | None,
                **kwargs: Any) -> PlayResult:
        results: list[PlayEvent] = []
        deadline = time.monotonic() + timeout if timeout else None
        state: dict[str, Any] = {"pid": None, "stopped": None}
        container = self.container
        ident = (container.ident_prefix if container else "") + uuid.uuid4().hex

        def should_stop() -> bool:
            # Checked by the runner every few seconds. Ansible runs each task's command in
            # a session of its own, which the runner's kill of ansible-playbook's process
            # group misses: stop the whole process tree first.
            if cancel is not None and cancel.is_set():
                state["stopped"] = "cancel"
            elif deadline is not None and time.monotonic() > deadline:
                state["stopped"] = "timeout"
            if state["stopped"] and container is not None:
                # the events' pids are the container's own: stop the container instead
                _stop_container(container, f"ansible_runner_{ident}")
            elif state["stopped"] and state["pid"]:
                kill_tree(int(state["pid"]))
            return bool(state["stopped"])

        def handle(data: dict) -> bool:
            state["pid"] = state["pid"] or data.get("pid")
            event = PlayEvent.parse(data)
            if event.is_result:
                results.append(event)
            if on_event is not None:
                on_event(event)
            return True

        # Only what differs from our own environment goes to the runner (which writes
        # it under the private dir); the runner starts from os.environ itself.
        envvars = {k: v for k, v in self.env.items() if os.environ.get(k) != v}
        # ansible-runner turns host key checking off unless told otherwise: keep Ansible's
        # own default (on) unless the caller's environment turns it off itself.
        if "ANSIBLE_HOST_KEY_CHECKING" not in os.environ:
            envvars.setdefault("ANSIBLE_HOST_KEY_CHECKING", "True")
        self._place(private, ident, inventory, envvars, kwargs)
        try:
            if self.suppress_env_files:
                kwargs["suppress_env_files"] = True
            # facts stay in memory: gathered facts hold ``ansible_env``, the whole
            # environment of the play (tokens too), which the runner's default jsonfile
            # fact cache would write under the artifacts
            runner = ansible_runner.run(
                private_data_dir=str(private), quiet=True, envvars=envvars, ident=ident,
                fact_cache_type="memory",
                event_handler=handle, cancel_callback=should_stop,
                **{k: v for k, v in kwargs.items() if v not in (None, [], {})},
            )
        finally:
            _forget_environment(private)
        artifacts = Path(runner.config.artifact_dir) if runner.config.artifact_dir else None
        result = PlayResult(status=str(runner.status), rc=int(runner.rc or 0),
                            stats=stats_from(runner.stats), results=results,
                            artifact_dir=artifacts)
        if state["stopped"] == "timeout":
            raise PlaybookTimeout(f"{what} did not finish within {timeout} s (stopped)")
        if state["stopped"] == "cancel" or result.status == "canceled":
            raise PlaybookCancelled(f"{what} was cancelled (stopped)")
        if check and not result.ok:
            first = result.failures[0] if result.failures else None
            if first is not None:
                raise PlaybookError(what, first.host or "?", first.task or "?",
                                    first.message, result)
            raise PlaybookError(what, "-", "-",
                                f"{result.status} (rc {result.rc}): {result.tail()}", result)
        return result


def _stop_container(container: Container, name: str) -> None:
    """Remove the run's container at once (the runner's own kill reaches only the
    engine's client process)."""
    subprocess.run([container.executable, "rm", "-f", "-t", "0", "--ignore", name],
                   capture_output=True, check=False, timeout=60)


def progress_line(label: str, event: PlayEvent, ordinal: int,
                  total: int | None = None) -> str | None:
    """The one line a person sees for ``event`` while a play runs, e.g.
    ``[harden] node1 ok: Apply sysctl (12/48)``; None for events that are not results."""
    if not event.is_result:
        return None
    where = f"({ordinal}/{total})" if total else f"({ordinal})"
    line = f"[{label}] {event.host} {event.status}: {event.task} {where}"
    if event.is_failure and event.message:
        line += f": {event.message.splitlines()[0][:200]}"
    return line


class Progress:
    """An ``on_event`` handler that prints one :func:`progress_line` per task result,
    counting tasks as they start."""

    def __init__(self, label: str, emit: Callable[[str], None] = print,
                 total: int | None = None) -> None:
        self.label = label
        self.emit = emit
        self.total = total
        self.tasks = 0

    def __call__(self, event: PlayEvent) -> None:
        if event.is_task_start:
            self.tasks += 1
            return
        line = progress_line(self.label, event, self.tasks, self.total)
        if line is not None:
            self.emit(line)
