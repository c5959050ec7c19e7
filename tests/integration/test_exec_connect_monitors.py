"""The exec and connect monitors on the real kernel, their records read as the agent's
protocol events (``aegis_agent.events``).

The exec monitor sees every exec on the host, so its deny set only ever holds copies of
binaries that this test made in its own temporary directory (a unique inode), and the
monitor is stopped (unpinned, detached) even when a test fails. Quarantine is tried on a
cgroup the test creates; nothing is attached to the host's own cgroups.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from aegis_agent.bpf.monitors import ConnectMonitor, ExecMonitor, MonitorError
from aegis_agent.events import from_record
from aegis_agent.policy import cgroup2_root
from conftest import sub_prefix

pytestmark = pytest.mark.integration



def v2_root() -> Path:
    """The cgroup v2 tree as the agent finds it; no v2 tree fails the test, never skips it:
    connect deny needs one and a host without it must not pass silently."""
    try:
        return cgroup2_root()
    except FileNotFoundError as e:
        pytest.fail(f"the connect-deny tests need cgroup v2: {e}")


def _bpftool(kind: str) -> str:
    return subprocess.run(["bpftool", kind, "show"], capture_output=True, text=True,
                          check=True).stdout


@pytest.fixture
def prefix() -> str:
    return sub_prefix()


@pytest.fixture
def execs(prefix: str) -> Iterator[ExecMonitor]:
    mon = ExecMonitor(f"/sys/fs/bpf/{prefix}-exec")
    try:
        yield mon
    finally:
        mon.stop()


@pytest.fixture
def connects(prefix: str) -> Iterator[ConnectMonitor]:
    mon = ConnectMonitor(f"/sys/fs/bpf/{prefix}-connect")
    try:
        yield mon
    finally:
        mon.stop()


@pytest.fixture
def workdir(prefix: str) -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def cgroup(prefix: str) -> Iterator[Path]:
    cg = v2_root() / f"{prefix}-q"
    cg.mkdir()
    try:
        yield cg
    finally:
        for pid in (cg / "cgroup.procs").read_text().split():
            os.kill(int(pid), signal.SIGKILL)
        cg.rmdir()


def _events_for(mon: ExecMonitor | ConnectMonitor, pred, tries: int = 20) -> list:
    found = []
    for _ in range(tries):
        found += [e for e in map(from_record, mon.wait(0.1)) if pred(e)]
        if found:
            return found
    return found


def test_denied_binary_is_killed_before_it_runs(execs: ExecMonitor, workdir: Path) -> None:
    info = execs.start()
    assert info["mode"] == "sigkill", info  # this kernel refuses BPF-LSM
    assert "refused" in str(info["reason"]) or "LSM" in str(info["reason"])
    denied, allowed = workdir / "denied-touch", workdir / "allowed-touch"
    shutil.copy("/usr/bin/touch", denied)
    shutil.copy("/usr/bin/touch", allowed)
    execs.deny(str(denied))
    bad = subprocess.run([str(denied), str(workdir / "marker-denied")], check=False)
    good = subprocess.run([str(allowed), str(workdir / "marker-allowed")], check=False)
    assert bad.returncode == -signal.SIGKILL
    assert not (workdir / "marker-denied").exists()
    assert good.returncode == 0 and (workdir / "marker-allowed").exists()
    events = _events_for(execs, lambda e: str(e.data["filename"]).startswith(str(workdir)))
    events += _events_for(execs, lambda e: str(e.data["filename"]).startswith(str(workdir)), 3)
    kinds = {e.data["filename"]: e.kind for e in events}
    assert kinds[str(denied)] == "exec_denied" and kinds[str(allowed)] == "exec"
    assert execs.stats()["denied"] >= 1
    execs.allow(str(denied))
    assert subprocess.run([str(denied), str(workdir / "marker-2")], check=False).returncode == 0


def test_exec_events_carry_pid_ppid_uid_and_file(execs: ExecMonitor, workdir: Path) -> None:
    execs.start()
    exe = workdir / "sleepy"
    shutil.copy("/bin/sleep", exe)
    proc = subprocess.Popen([str(exe), "0"])
    proc.wait()
    (ev,) = _events_for(execs, lambda e: e.data["filename"] == str(exe))
    st = exe.stat()
    assert ev.kind == "exec"
    assert ev.data["pid"] == proc.pid and ev.data["ppid"] == os.getpid()
    assert ev.data["uid"] == os.getuid() and ev.data["comm"] == "sleepy"
    assert ev.data["ino"] == st.st_ino and ev.data["dev"] == st.st_dev


_SCOPED_CHILD = """
import json, os, shutil, subprocess, sys, time
from aegis_agent.bpf.monitors import ExecMonitor
from aegis_agent.events import from_record
from aegis_agent.policy import cgroup2_root
pin, workdir = sys.argv[1], sys.argv[2]
mon = ExecMonitor(pin)  # scope "auto": this process is in its own PID namespace
info = mon.start()
try:
    mon.deny(workdir + "/denied")
    print(json.dumps(info), flush=True)
    sys.stdin.readline()  # the test ran its execs outside
    inside = subprocess.run([workdir + "/inside"], check=False)
    time.sleep(0.2)
    events = []
    for _ in range(10):
        events += [from_record(r).model_dump(mode="json") for r in mon.wait(0.1)]
    print(json.dumps({"events": events, "inside_pid": inside.returncode,
                      "me": os.getpid()}), flush=True)
finally:
    mon.stop()
"""


def test_monitor_in_a_pid_namespace_sees_and_denies_only_its_own_processes(
        prefix: str, workdir: Path) -> None:
    """An agent in a container node shares the kernel: its exec monitor must neither
    report nor kill the host's (or another node's) processes, and it reports pids as
    the node sees them."""
    for name in ("inside", "outside", "denied"):
        shutil.copy("/bin/true", workdir / name)
    pin = f"/sys/fs/bpf/{prefix}-scoped"
    child = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", _SCOPED_CHILD,
         pin, str(workdir)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout and child.stdin
        info = json.loads(child.stdout.readline())
        assert isinstance(info["pid_namespace"], int), info
        # outside the namespace: not reported, and the deny set does not apply here
        assert subprocess.run([str(workdir / "outside")], check=False).returncode == 0
        assert subprocess.run([str(workdir / "denied")], check=False).returncode == 0
        child.stdin.write("go\n")
        child.stdin.flush()
        result = json.loads(child.stdout.readline())
        assert child.wait(timeout=30) == 0
    finally:
        if child.poll() is None:
            child.kill()
        ExecMonitor(pin).stop()
    files = {e["data"]["filename"]: e for e in result["events"]}
    assert str(workdir / "inside") in files
    assert str(workdir / "outside") not in files and str(workdir / "denied") not in files
    ev = files[str(workdir / "inside")]
    assert ev["data"]["ppid"] == result["me"] and ev["data"]["pid"] < 100, ev
    assert not Path(pin).exists()


def test_deny_of_a_missing_file_is_a_clear_error(execs: ExecMonitor, workdir: Path) -> None:
    execs.start()
    with pytest.raises(MonitorError, match="cannot stat"):
        execs.deny(str(workdir / "nope"))
    with pytest.raises(MonitorError, match="not a regular file"):
        execs.deny(str(workdir))


def test_restart_keeps_the_deny_set_and_stop_removes_everything(prefix: str,
                                                               workdir: Path) -> None:
    pin = f"/sys/fs/bpf/{prefix}-exec"
    exe = workdir / "t"
    shutil.copy("/bin/true", exe)
    first = ExecMonitor(pin)
    try:
        first.start()
        first.deny(str(exe))
        first.close()  # the agent exits: pins stay
        again = ExecMonitor(pin)
        assert again.start()["reused"] is True
        assert subprocess.run([str(exe)], check=False).returncode == -signal.SIGKILL
        ids = [ln.split(":")[0] for ln in _bpftool("link").splitlines() if "exec_trace" in ln]
        again.stop()
        assert not Path(pin).exists()
        assert subprocess.run([str(exe)], check=False).returncode == 0
        after = _bpftool("link")
        assert all(f"{i}:" not in after.split() for i in ids)
    finally:
        ExecMonitor(pin).stop()


def test_connect_events_name_the_process_and_destination(connects: ConnectMonitor) -> None:
    connects.start()
    with socket.create_server(("127.0.0.1", 0)) as srv:
        port = srv.getsockname()[1]
        code = f"import socket; socket.create_connection(('127.0.0.1', {port})).close()"
        proc = subprocess.run([sys.executable, "-c", code], check=True)
        del proc
    events = _events_for(connects, lambda e: e.data["dport"] == port)
    assert events, "no connect event"
    ev = events[0]
    assert ev.kind == "connect" and ev.data["daddr"] == "127.0.0.1"
    assert ev.data["proto"] == "tcp" and ev.data["family"] == "inet"
    assert ev.data["comm"] == Path(sys.executable).name[:15]


def test_quarantined_cgroup_reaches_only_management(connects: ConnectMonitor,
                                                    cgroup: Path) -> None:
    connects.start()
    with socket.create_server(("127.0.0.1", 0)) as mgmt, \
            socket.create_server(("127.0.0.1", 0)) as other:
        mport, oport = mgmt.getsockname()[1], other.getsockname()[1]
        connects.quarantine_cgroup(str(cgroup), allow=[f"127.0.0.1 tcp/{mport}"])
        code = (f"import os, socket\n"
                f"open('{cgroup}/cgroup.procs', 'w').write(str(os.getpid()))\n"
                f"for port in ({mport}, {oport}):\n"
                f"    try:\n"
                f"        socket.create_connection(('127.0.0.1', port), timeout=2).close()\n"
                f"        print(port, 'ok')\n"
                f"    except OSError as e:\n"
                f"        print(port, e.errno)\n")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True).stdout.split("\n")
        assert out[0] == f"{mport} ok"
        assert out[1] == f"{oport} 1"  # EPERM
        # a process outside the cgroup is not affected
        socket.create_connection(("127.0.0.1", oport), timeout=2).close()
        denied = _events_for(connects, lambda e: e.kind == "connect_denied")
        assert denied and denied[0].data["dport"] == oport
        assert denied[0].data["cgroup_id"] == cgroup.stat().st_ino
        assert connects.quarantined() == [cgroup.stat().st_ino]
        assert connects.release_cgroup(str(cgroup))
        code2 = (f"import os, socket\nopen('{cgroup}/cgroup.procs', 'w').write(str(os.getpid()))\n"
                 f"socket.create_connection(('127.0.0.1', {oport}), timeout=2).close()\n")
        subprocess.run([sys.executable, "-c", code2], check=True)


def test_bad_management_spec_is_refused(connects: ConnectMonitor, cgroup: Path) -> None:
    connects.start()
    with pytest.raises(MonitorError, match="ADDRESS tcp/PORT"):
        connects.quarantine_cgroup(str(cgroup), allow=["not-an-address"])
    with pytest.raises(MonitorError, match="not a cgroup"):
        connects.quarantine_cgroup("/tmp", allow=[])
