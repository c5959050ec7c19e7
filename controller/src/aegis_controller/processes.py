"""The machine's process table, read from /proc: a process's start time (to tell it from
a later one with the same id), its children, a process group's members, and killing a
whole tree or group with every process it started in other sessions (Ansible runs each
task's worker in a session of its own, which a kill of ansible-playbook's group misses).
Used by the playbook runner (stopping a run) and the recovery engine (a dead attempt's
leftovers)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Mapping, Sequence
from pathlib import Path


def _stat(pid: int | str) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot), to tell it from a later
    process with the same id; None when there is none."""
    fields = _stat(pid)
    return int(fields[19]) if fields else None


def group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(entry.name)
            if fields and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                members.append(int(entry.name))
    return members


def descendants(pids: Sequence[int]) -> dict[int, int | None]:
    """Every live process started by ``pids`` or by their descendants (whatever group or
    session it moved to: Ansible runs each task's worker in a session of its own), with its
    start time; ``pids`` themselves are not included."""
    tree = children()
    found: dict[int, int | None] = {}
    todo = [c for p in pids for c in tree.get(p, [])]
    while todo:
        pid = todo.pop()
        if pid not in found and pid not in pids:
            found[pid] = process_start(pid)
            todo.extend(tree.get(pid, []))
    return found


def alive(processes: Mapping[int, int | None]) -> dict[int, int | None]:
    """Those of ``processes`` (pid: start time) still running as themselves."""
    return {pid: start for pid, start in processes.items()
            if (now := process_start(pid)) is not None and now == start
            and (_stat(pid) or ["Z"])[0] not in ("Z", "X")}


def kill_group(pgid: int, start: int | None, grace: float = 5.0) -> str:
    """Kill what is left of process group ``pgid`` (SIGTERM, after ``grace`` seconds
    SIGKILL), and with it every process its members started in another group or session
    (SIGKILL once the grace is over, if the group's own SIGTERM did not stop them);
    ``start`` is its leader's start time when recorded: a leader that started at another
    time is another process that reuses the id, and is left alone. Returns what happened,
    in words."""
    members = group_members(pgid)
    if not members:
        return "already gone"
    leader = process_start(pgid)
    if start is not None and leader is not None and leader != start:
        return "id reused by another process: left alone"
    others = descendants(members)
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:  # the group ended meanwhile; what it started may not
            pass
        except PermissionError:
            return "not ours to kill (permission denied)"
        if sig == signal.SIGKILL:
            for pid in alive(others):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not group_members(pgid) and not alive(others):
                return f"killed ({signal.Signals(sig).name})"
            time.sleep(0.05)
    return "still running after SIGKILL"


def children() -> dict[int, list[int]]:
    """``{ppid: [pid, ...]}`` of every live (not zombie) process now."""
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        fields = _stat(entry.name) if entry.name.isdigit() else None
        if fields and fields[0] not in ("Z", "X"):
            tree.setdefault(int(fields[1]), []).append(int(entry.name))
    return tree


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and all its descendants (whatever session they are in)."""
    tree = children()
    todo, found = [pid], []
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(tree.get(current, []))
    for victim in reversed(found):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(victim, signal.SIGKILL)
