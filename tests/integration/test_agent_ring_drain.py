"""The agent's drain of a real exec ring (issue 16): a batch goes to the spool in one write
and one fsync, and its ring slots are released only after that fsync, so an agent killed
before it loses nothing: the next one spools the same records under the same ids (the
controller, keyed on (node, id), stores each once)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from aegis_agent.bpf.monitors import ExecMonitor
from aegis_agent.bpf.syscall import map_info
from aegis_agent.config import parse_config
from aegis_agent.daemon import Agent
from aegis_agent.events import ExecDecoder, RingIds
from aegis_agent.spool import Spool
from conftest import sub_prefix

pytestmark = pytest.mark.integration

N = 40

# a second agent process: drains the ring and is killed (os._exit) at the spool's fsync
_DIES_AT_FSYNC = """
import os, sys
from aegis_agent.bpf.monitors import ExecMonitor
from aegis_agent.bpf.syscall import map_info
from aegis_agent.config import parse_config
from aegis_agent.daemon import Agent
from aegis_agent.events import ExecDecoder, RingIds
from aegis_protocol.events import agent_event
pin, spool = sys.argv[1], sys.argv[2]
agent = Agent(parse_config("spool: {dir: %s}" % spool))
agent.spool.append([agent_event("start")])  # the segment exists: the drain's write lands
ring = ExecMonitor(pin).batch()
decode = ExecDecoder(agent.offset_ns, RingIds(map_info(ring.fileno()).id)).events
os.fsync = lambda fd: os._exit(9)
agent._drain(ring, decode)
"""


@pytest.fixture
def work() -> Iterator[tuple[Path, Path]]:
    prefix = sub_prefix()
    pin = Path(f"/sys/fs/bpf/{prefix}-exec")
    root = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
    try:
        yield pin, root
    finally:
        ExecMonitor(pin).stop()
        shutil.rmtree(root, ignore_errors=True)


def _ours(spool: Path, exe: Path) -> list:
    return [e for _s, e in Spool(spool).read(-1, 1 << 20)
            if e.kind == "exec" and e.data.get("filename") == str(exe)]


def test_a_drain_killed_at_its_fsync_loses_nothing_and_the_next_spools_it_once(
        work: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    pin, root = work
    mon = ExecMonitor(pin)
    mon.start()
    exe = root / "drain-true"
    shutil.copy("/bin/true", exe)
    for _ in range(N):
        subprocess.run([str(exe)], check=True)
    spool = root / "spool"
    died = subprocess.run([sys.executable, "-c", _DIES_AT_FSYNC, str(pin), str(spool)],
                          check=False, capture_output=True, text=True)
    assert died.returncode == 9, died.stderr[-2000:]

    agent = Agent(parse_config(f"spool: {{dir: {spool}}}"))
    ring = mon.batch()
    decode = ExecDecoder(agent.offset_ns, RingIds(map_info(ring.fileno()).id)).events
    assert sum(1 for e in decode(ring.pending())
               if e.data["filename"] == str(exe)) == N  # all still in the ring
    fsyncs: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (fsyncs.append(fd), real_fsync(fd))[1])
    released = []
    real_release = ring.release
    monkeypatch.setattr(ring, "release", lambda: (released.append(len(fsyncs)),
                                                  real_release())[1])
    agent._drain(ring, decode)
    assert fsyncs and released == [1]  # one fsync for the batch, then the release
    monkeypatch.undo()
    agent.spool.close()
    assert not any(e.data["filename"] == str(exe) for e in decode(ring.pending()))

    events = _ours(spool, exe)
    assert len(Spool(spool).read(-1, 1 << 20)) > 1 + N  # the start, the batch (or two)
    # the killed drain's write (flushed, not yet fsynced) survives in the page cache beside
    # the new one: the same records under the same ids, so the controller stores each once
    assert len(events) == 2 * N and len({e.id for e in events}) == N
    assert sorted(e.data["pid"] for e in {e.id: e for e in events}.values()) == \
        sorted({e.data["pid"] for e in events})
