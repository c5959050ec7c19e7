"""The compromise the README's demo plays, on the real kernel: an unknown program dropped
in a writable directory is run; the agent daemon's exec monitor reports the exec, a
``match_prefix`` policy rule with action ``deny`` fires, the running process is killed
(SIGKILL, checked against the file the kernel ran) and the next exec of the file is refused.

The rule's prefix is this test's own directory (under /tmp), never /tmp/ itself: the exec
monitor sees the whole host, and other tests run programs from /tmp at the same time. The
daemon and everything it attached are removed afterwards (``daemon_lab``).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from test_agent_daemon import Daemon, _wait_for, daemon_lab

from harness import NetnsPair

pytestmark = pytest.mark.integration


@pytest.fixture
def daemon(netns: NetnsPair) -> Iterator[Daemon]:
    yield from daemon_lab(netns)


def _start_with_writable_dir_rule(daemon: Daemon) -> Path:
    """Start the daemon with the rule the role README shows, on a directory of its own."""
    dropped = daemon.root / "dropped"
    dropped.mkdir()
    cfg = yaml.safe_load(daemon.config.read_text())
    cfg["policy"].append({"name": "exec-from-writable-dir", "kind": "exec",
                          "match_prefix": {"filename": [f"{dropped}/"]}, "action": "deny"})
    daemon.config.write_text(yaml.safe_dump(cfg))
    daemon.start()
    return dropped


def _end_of(proc: subprocess.Popen) -> int:
    """How ``proc`` (which never ends on its own) ended within 20 s; killed here after."""
    try:
        return proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _run(path: str, *args: str) -> int | str:
    """The exit status of one exec of ``path``; "EPERM" when BPF-LSM refused the exec."""
    try:
        return subprocess.run([path, *args], check=False, timeout=30).returncode
    except PermissionError:
        return "EPERM"


def test_a_program_run_from_a_writable_dir_is_killed_and_refused_after(daemon: Daemon) -> None:
    dropped = _start_with_writable_dir_rule(daemon)
    implant, bystander = dropped / "implant", daemon.root / "bystander"
    shutil.copy("/bin/sleep", implant)
    shutil.copy("/bin/true", bystander)

    proc = subprocess.Popen([str(implant), "300"])  # a long-running program
    assert _end_of(proc) == -signal.SIGKILL  # killed by the agent, not ended on its own
    assert _run(str(implant), "0") in (-signal.SIGKILL, "EPERM")  # denied from now on
    assert _run(str(bystander)) == 0  # outside the prefix: runs

    assert _wait_for(lambda: any(e["kind"] == "exec_denied" for e in daemon.events()), 10)
    events = daemon.events()
    (pol,) = [e for e in events if e["kind"] == "policy"
              and e["data"]["rule"] == "exec-from-writable-dir"]
    assert pol["data"]["action"] == "deny"
    assert f"pid {proc.pid} killed (SIGKILL)" in pol["data"]["result"], pol
    (verb,) = [e for e in events if e["kind"] == "agent" and e["data"].get("what") == "deny-exec"]
    st = implant.stat()
    assert verb["data"]["source"] == "policy" and verb["data"]["pid"] == proc.pid
    assert verb["data"]["killed"] is True
    assert (verb["data"]["dev"], verb["data"]["ino"]) == (st.st_dev, st.st_ino)
    assert verb["data"]["path"] == str(implant)
    denied = [e for e in events if e["kind"] == "exec_denied"]
    assert [e["data"]["filename"] for e in denied] == [str(implant)]
    # one decision: the bystander matched nothing, the refused exec is not an "exec"
    assert [e["data"]["rule"] for e in events if e["kind"] == "policy"] == [
        "exec-from-writable-dir"]


def test_a_script_run_from_a_writable_dir_is_killed_and_its_shell_never_denied(
        daemon: Daemon) -> None:
    """A dropped #! script: the kernel's event names the interpreter's file (/bin/sh, the
    flag ``interpreted``). The script's process is killed; the shell is not denied (every
    script and shell on the node would be refused, the role's own SSH sessions included)."""
    dropped = _start_with_writable_dir_rule(daemon)
    script = dropped / "stage2.sh"
    script.write_text("#!/bin/sh\nexec 2>/dev/null\nwhile :; do sleep 1; done\n")
    script.chmod(0o755)
    proc = subprocess.Popen([str(script)])  # runs until killed
    assert _end_of(proc) == -signal.SIGKILL
    assert _run("/bin/sh", "-c", "exit 0") == 0  # the shell still runs
    assert _wait_for(lambda: any(e["kind"] == "policy" for e in daemon.events()), 10)
    events = daemon.events()
    (verb,) = [e for e in events if e["kind"] == "agent" and e["data"].get("what") == "deny-exec"]
    assert verb["data"]["interpreted"] is True and verb["data"]["killed"] is True
    assert verb["data"]["path"] == str(script) and verb["data"]["pid"] == proc.pid
    (ran,) = [e for e in events if e["kind"] == "exec" and e["data"]["filename"] == str(script)]
    assert ran["data"]["interpreted"] is True
    assert not [e for e in events if e["kind"] == "exec_denied"]
