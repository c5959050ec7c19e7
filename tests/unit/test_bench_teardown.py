"""A benchmark's SIGTERM handler unwinds its own process only: a fork of it (pyroute2 forks
to create a network namespace and stops the child with SIGTERM) ends without running the
parent's ``finally`` blocks, which would remove what the benchmark still uses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness import REPO

pytestmark = pytest.mark.unit

SCRIPT = textwrap.dedent("""
    import os, signal, sys, time
    from benchmarks.teardown import exit_on_sigterm
    exit_on_sigterm()
    marker = sys.argv[1]
    try:
        pid = os.fork()
        if pid == 0:  # the child: waits inside the parent's try, as pyroute2's does
            time.sleep(30)
            os._exit(0)
        time.sleep(0.3)
        os.kill(pid, signal.SIGTERM)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status))
        os.kill(os.getpid(), signal.SIGTERM)  # the parent itself: unwinds
        time.sleep(30)
    finally:
        with open(marker, "a") as f:
            f.write(f"teardown in {os.getpid()}\\n")
""")


def test_a_fork_ends_without_the_parents_teardown(tmp_path: Path) -> None:
    marker = tmp_path / "teardown.log"
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(marker)], cwd=REPO,
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 128 + signal.SIGTERM, out.stderr
    assert out.stdout.split() == [str(128 + signal.SIGTERM)]  # the child's exit
    lines = marker.read_text().splitlines()
    assert len(lines) == 1, lines  # the parent's teardown only, once
    assert os.getpid() != int(lines[0].split()[-1])
