"""Stand-in steps: no machine is touched; the real steps are tested elsewhere.

:class:`StandInSteps` implements the recovery engine's :class:`~aegis_controller.recovery.
steps.Steps` contract for the engine's tests: it records each call (step, node, attempt),
can fail a chosen step with a :class:`StepError`, can block a step until the test releases
it (or the engine cancels it), can start a real ``sleep`` in its own process group (reported
with ``ctx.started_process``) and can "crash" after that, as a controller killed mid-step
would. ``on_enroll(node_id)`` plays the new machine: the test enrolls it for real through
the controller's store API with a fresh key and attests it."""

from __future__ import annotations

import hashlib
import json
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aegis_controller.recovery.steps import DryRun, StepCancelled, StepContext, StepError


class SimulatedCrash(BaseException):
    """The controller "dies" in the middle of a step: the engine catches Exceptions only,
    so this leaves the job as a killed process would (leased, its process group recorded)."""


@dataclass
class Gate:
    """A blocked step: ``entered`` is set when the step is inside, ``release`` lets it go."""

    entered: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)


GOLDEN = json.dumps({"golden": {"/etc/aegis/standin": "0" * 64}, "units": {}})


class StandInSteps:
    """Stand-in steps (see the module doc). Not thread-unsafe: counters under a lock."""

    def __init__(self, on_enroll: Callable[[str], None] | None = None) -> None:
        self.on_enroll = on_enroll
        self.calls: list[tuple[str, str, int]] = []
        self.fail: dict[str, str] = {}
        self.gates: dict[str, Gate] = {}
        self.spawn: set[str] = set()
        self.crash: set[str] = set()
        self.remember: dict[str, dict[str, Any]] = {}  # step -> fields it remembers at once
        self.seen: list[tuple[str, dict[str, Any]]] = []  # (step, the data it was given)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.token_commands: list[list[str]] = []
        self.results: dict[str, dict[str, Any]] = {}
        self.running: dict[str, int] = {}  # job id -> steps running now
        self.most_at_once: dict[str, int] = {}  # job id -> most steps running at once
        self._lock = threading.Lock()

    def block(self, step: str) -> Gate:
        gate = self.gates[step] = Gate()
        return gate

    def steps_called(self, node_id: str | None = None) -> list[str]:
        return [s for s, n, _ in self.calls if node_id is None or n == node_id]

    def cleanup(self) -> None:
        """Kill every process a step started (tests call it even on failure)."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
        for gate in self.gates.values():
            gate.release.set()

    def _step(self, name: str, ctx: StepContext) -> None:
        with self._lock:
            self.calls.append((name, ctx.node_id, ctx.generation))
            self.seen.append((name, dict(ctx.data)))
            self.running[ctx.job_id] = self.running.get(ctx.job_id, 0) + 1
            self.most_at_once[ctx.job_id] = max(self.most_at_once.get(ctx.job_id, 0),
                                                self.running[ctx.job_id])
        try:
            ctx.progress(f"stand-in {name} of {ctx.node_id}", step=name)
            if name in self.remember:
                ctx.remember(**self.remember[name])
            if name in self.spawn:
                proc = subprocess.Popen(["sleep", "300"], start_new_session=True)
                self.procs.append(proc)
                ctx.started_process(proc.pid)
            if name in self.crash:
                self.crash.discard(name)
                raise SimulatedCrash(name)
            gate = self.gates.get(name)
            if gate is not None:
                gate.entered.set()
                while not gate.release.wait(0.05):
                    if ctx.cancel.is_set():
                        raise StepCancelled(f"stand-in {name} cancelled")
            if name in self.fail:
                raise StepError(self.fail[name])
        finally:
            with self._lock:
                self.running[ctx.job_id] -= 1

    def contain(self, ctx: StepContext) -> Mapping[str, Any]:
        self._step("contain", ctx)
        return self.results.get("contain", {"contained": "soft"})

    def collect(self, ctx: StepContext) -> Mapping[str, Any]:
        self._step("collect", ctx)
        digest = hashlib.sha256(f"bundle of {ctx.node_id}".encode()).hexdigest()
        return self.results.get("collect", {
            "bundle_path": f"/var/lib/aegis/forensics/{ctx.node_id}.tar.age",
            "bundle_sha256": digest, "bundle_bytes": 4096})

    def replace(self, ctx: StepContext) -> Mapping[str, Any]:
        self._step("replace", ctx)
        return self.results.get("replace", {"old_instance_id": f"standin-{ctx.node_id}-old",
                                            "new_instance_id": f"standin-{ctx.node_id}-new"})

    def verify(self, ctx: StepContext) -> Mapping[str, Any]:
        self._step("verify", ctx)
        return self.results.get("verify", {"golden": GOLDEN, "drift": 0})

    def enroll(self, ctx: StepContext, token_command: Sequence[str]) -> Mapping[str, Any]:
        self._step("enroll", ctx)
        self.token_commands.append(list(token_command))
        if self.on_enroll is not None:
            self.on_enroll(ctx.node_id)
        return self.results.get("enroll", {"enroll_play": "ok"})

    def dry_run(self, node_id: str) -> DryRun:
        return DryRun(node_id, [f"# stand-in plan: aegis_node.{node_id} must be replaced",
                                "Plan: 1 to add, 0 to change, 1 to destroy."],
                      ["playbooks/quarantine.yml", "playbooks/forensics.yml",
                       "playbooks/rebuild.yml"])


def standin_factory(_settings: object) -> StandInSteps:
    """The stand-in as steps of one's own: a recovery settings file with ``backend: python``
    and ``python: {factory: recovery_standin:standin_factory}``."""
    return StandInSteps()
