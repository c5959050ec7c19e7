"""A local ``deny`` acts on what the kernel event names, never on a path or PID looked up
afterwards: a symlink ``nc`` to another binary gets only the exec'd file denied, the
event's process is killed only while it still runs that file, and a connect from an
exited process quarantines the cgroup the event carried."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from aegis_agent import policy
from aegis_agent.bpf.monitors import ExecMonitor
from aegis_agent.enforcement import Enforcement
from aegis_agent.policy import Decision, respond
from aegis_protocol.events import Event

pytestmark = pytest.mark.unit


class Execs:
    """The deny set of an ExecMonitor, as (dev, ino) pairs; ``deny(path)`` resolves the
    path the way ExecMonitor does (stat follows symlinks)."""

    def __init__(self) -> None:
        self.files: set[tuple[int, int]] = set()

    def deny(self, path: str) -> None:
        st = os.stat(path)
        self.files.add((st.st_dev, st.st_ino))

    def deny_file(self, dev: int, ino: int) -> None:
        self.files.add((dev, ino))

    kill_running = staticmethod(ExecMonitor.kill_running)  # the real one: no BPF in it

    def denied(self) -> list[dict[str, int]]:
        return [{"dev": d, "ino": i} for d, i in sorted(self.files)]


class Connects:
    def __init__(self) -> None:
        self.cgroups: list[str] = []

    def quarantine_cgroup(self, path: str, allow: object = None,
                          expect_id: int | None = None) -> None:
        assert expect_id is None or os.stat(path).st_ino == expect_id
        self.cgroups.append(path)

    def quarantined(self) -> list[str]:
        return self.cgroups


def _enforcement() -> tuple[Enforcement, list]:
    events: list = []
    return Enforcement(None, Execs(), Connects(), events.extend), events  # type: ignore[arg-type]


def test_exec_deny_uses_the_events_device_and_inode_not_the_symlink(tmp_path: Path) -> None:
    sshd, nc = tmp_path / "sshd", tmp_path / "real-nc"
    sshd.write_text("#!/bin/sh\n")
    nc.write_text("#!/bin/sh\n")
    (tmp_path / "nc").symlink_to(sshd)  # a user-made name the rule matches on
    ran = os.stat(nc)  # the file the kernel actually executed
    event = Event(ts_ns=1, kind="exec", data={"filename": str(tmp_path / "nc"), "pid": 7,
                                              "dev": ran.st_dev, "ino": ran.st_ino})
    enf, recorded = _enforcement()
    respond(Decision("no-nc", "deny", event), enf)
    assert enf.execs.files == {(ran.st_dev, ran.st_ino)}  # type: ignore[union-attr]
    assert (os.stat(sshd).st_dev, os.stat(sshd).st_ino) not in enf.execs.files  # type: ignore[union-attr]
    assert recorded[0].data["ino"] == ran.st_ino and recorded[0].data["source"] == "policy"


def test_exec_deny_without_the_kernels_inode_is_refused_not_resolved(tmp_path: Path) -> None:
    event = Event(ts_ns=1, kind="exec", data={"filename": "/usr/sbin/sshd", "pid": 7})
    enf, _ = _enforcement()
    with pytest.raises(ValueError, match="without a kernel dev"):
        respond(Decision("no-nc", "deny", event), enf)
    assert enf.execs.files == set()  # type: ignore[union-attr]


def test_connect_deny_uses_the_events_cgroup_id_not_the_pid(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "cgroup"  # a cgroup v2 tree as the agent finds it
    for cg in (root, root / "system.slice", root / "system.slice" / "web.service"):
        cg.mkdir(exist_ok=True)
        (cg / "cgroup.procs").write_text("")
    web = root / "system.slice" / "web.service"
    monkeypatch.setattr(policy, "CGROUP_ROOTS", (root,))
    gone = 2**22 + 12345  # the process has exited (or its PID now belongs to another)
    event = Event(ts_ns=1, kind="connect", data={"pid": gone, "cgroup_id": web.stat().st_ino,
                                                 "daddr": "192.0.2.9", "dport": 4444})
    enf, _ = _enforcement()
    respond(Decision("no-egress", "deny", event), enf)
    assert enf.connects.cgroups == [str(web)]  # type: ignore[union-attr]



def test_the_cgroup_v2_root_is_found_on_a_pure_v2_host_too(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bookworm mounts cgroup v2 at /sys/fs/cgroup with no unified/ below it; a hybrid
    host has v1's tmpfs there and v2 under unified/. Both are found; neither is an error."""
    pure = tmp_path / "cgroup"
    pure.mkdir()
    roots = (pure / "unified", pure)
    monkeypatch.setattr(policy, "CGROUP_ROOTS", roots)
    with pytest.raises(FileNotFoundError, match="no cgroup v2 hierarchy"):
        policy.cgroup2_root()
    (pure / "cgroup.procs").write_text("")
    assert policy.cgroup2_root() == pure
    (pure / "unified").mkdir()
    (pure / "unified" / "cgroup.procs").write_text("")
    assert policy.cgroup2_root() == pure / "unified"


# -- the running process of a denied exec ----------------------------------------------------
@pytest.fixture
def sleeper(tmp_path: Path):
    """A long-running process started from a copy of sleep (its own inode), killed after;
    Popen returns once the exec is done, so /proc/PID/exe is already the copy."""
    exe = tmp_path / "sleeper"
    shutil.copy("/bin/sleep", exe)
    proc = subprocess.Popen([str(exe), "60"])
    try:
        yield proc, exe
    finally:
        proc.kill()
        proc.wait()


def _exec_event(pid: int, st: os.stat_result, filename: str) -> Event:
    return Event(ts_ns=1, kind="exec", data={"filename": filename, "pid": pid,
                                              "dev": st.st_dev, "ino": st.st_ino})


def test_exec_deny_kills_the_process_still_running_the_file(sleeper, tmp_path: Path) -> None:
    proc, exe = sleeper
    enf, recorded = _enforcement()
    summary = respond(Decision("exec-from-writable-dir", "deny",
                               _exec_event(proc.pid, exe.stat(), str(exe))), enf)
    assert proc.wait(timeout=5) == -signal.SIGKILL
    assert f"pid {proc.pid} killed (SIGKILL)" in summary
    (ev,) = recorded
    assert ev.data["killed"] is True and ev.data["pid"] == proc.pid
    assert ev.data["kill_reason"] == f"pid {proc.pid} killed (SIGKILL)"
    assert ev.severity == "warning"


def test_a_pid_that_runs_another_file_is_not_signalled(sleeper, tmp_path: Path) -> None:
    """The PID was reused, or the process exec'd something else: the event's inode is not
    what /proc/PID/exe is, so nothing is signalled; the file is still denied."""
    proc, exe = sleeper
    other = tmp_path / "other"
    other.write_text("#!/bin/sh\n")  # same device, another inode
    ran = other.stat()
    enf, recorded = _enforcement()
    summary = respond(Decision("r", "deny", _exec_event(proc.pid, ran, str(exe))), enf)
    time.sleep(0.2)
    assert proc.poll() is None  # still running: not signalled
    assert enf.execs.files == {(ran.st_dev, ran.st_ino)}  # type: ignore[union-attr]
    assert "not signalled: it now runs another file" in summary
    (ev,) = recorded
    assert ev.data["killed"] is False and "another file" in str(ev.data["kill_reason"])


def test_a_pid_that_has_exited_is_not_signalled(tmp_path: Path) -> None:
    exe = tmp_path / "quick"
    shutil.copy("/bin/true", exe)
    proc = subprocess.Popen([str(exe)])
    proc.wait()  # reaped: the PID names no process
    enf, recorded = _enforcement()
    summary = respond(Decision("r", "deny", _exec_event(proc.pid, exe.stat(), str(exe))), enf)
    assert f"pid {proc.pid} not signalled: it has exited" in summary
    assert recorded[0].data["killed"] is False


def test_an_exec_denied_event_kills_nothing(sleeper) -> None:
    """exec_denied: the kernel already refused (or killed) that exec; its PID is not
    looked at again, whatever runs there now."""
    proc, exe = sleeper
    ev = _exec_event(proc.pid, exe.stat(), str(exe)).model_copy(update={"kind": "exec_denied"})
    enf, recorded = _enforcement()
    summary = respond(Decision("r", "deny", ev), enf)
    time.sleep(0.2)
    assert proc.poll() is None and "killed" not in recorded[0].data
    assert summary.endswith("denied")


def test_a_scripts_interpreter_is_never_denied_only_the_process_killed(tmp_path: Path) -> None:
    """A #! script's exec event carries the interpreter's device and inode (/bin/sh): a
    deny must not put the shell on the deny set (every script and shell on the node would
    be refused); the running script is still killed."""
    script = tmp_path / "dropper.sh"
    script.write_text("#!/bin/sh\nexec 2>/dev/null\nwhile :; do sleep 1; done\n")
    script.chmod(0o755)
    proc = subprocess.Popen([str(script)])
    try:
        shell = os.stat(f"/proc/{proc.pid}/exe")  # what the kernel reports: the interpreter
        ev = Event(ts_ns=1, kind="exec", data={"filename": str(script), "pid": proc.pid,
                                               "dev": shell.st_dev, "ino": shell.st_ino,
                                               "interpreted": True})
        enf, recorded = _enforcement()
        summary = respond(Decision("exec-from-writable-dir", "deny", ev), enf)
        assert proc.wait(timeout=5) == -signal.SIGKILL
    finally:
        proc.kill()
        proc.wait()
    assert enf.execs.files == set()  # type: ignore[union-attr]
    assert "not denied: that file is the interpreter" in summary and "killed" in summary
    assert recorded[0].data["interpreted"] is True and recorded[0].data["killed"] is True
