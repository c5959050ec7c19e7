"""sshd's lines read from a real systemd journal (aegis_agent.journal_follower, the
agent's ``ssh_krl.session_log: journal``): on a fleet node (systemd, journald with no
syslog daemon, sshd), the follower — its module run there as it is, by python3 — reports
the ``Accepted publickey`` line of a fresh SSH login, the agent's parser names the sshd
pid of that connection's session (monitor) process in it, as a login without a grant,
and closing the follower leaves no journalctl behind. Read-only on the node."""

from __future__ import annotations

import json
import select
import shlex
import subprocess
import time
from pathlib import Path

import pytest

from aegis_agent import journal_follower
from aegis_agent.ssh_sessions import parse_line
from aegis_lab.fleet import LocalFleet

pytestmark = pytest.mark.e2e

# run on the node after journal_follower's source: follow until stdin closes, each line
# as JSON; then close and report the child's pid
DRIVER = """
import json, select, sys
f = JournalFollower()
f.lines()
def status(pid):
    return dict(ln.split(":\t", 1) for ln in open(f"/proc/{pid}/status").read().splitlines()
                if ln.startswith(("CapEff", "CapAmb", "NoNewPrivs", "Seccomp")))
print(json.dumps({"journalctl_pid": f.proc.pid, "journalctl": status(f.proc.pid),
                  "agent": status("self")}), flush=True)
while not select.select([sys.stdin], [], [], 0.05)[0]:
    for line in f.lines():
        print(json.dumps({"line": line}), flush=True)
f.close()
print(json.dumps({"closed": True}), flush=True)
"""


UNIT = Path(__file__).parents[2] / "roles/agent/files/aegis-agent.service"
#: the agent unit's sandbox settings the journal reader runs under
SANDBOX = ("ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices",
           "ProtectKernelModules", "ProtectKernelLogs", "ProtectClock", "ProtectHostname",
           "ProtectControlGroups", "ProtectKernelTunables", "RestrictAddressFamilies",
           "RestrictNamespaces", "RestrictRealtime", "RestrictSUIDSGID", "LockPersonality",
           "MemoryDenyWriteExecute", "SystemCallArchitectures", "SystemCallFilter",
           "SystemCallErrorNumber", "NoNewPrivileges", "SecureBits", "UMask", "TasksMax")


def sandboxed(command: list[str]) -> list[str]:
    """``command`` in a transient unit with the agent unit's sandbox and one of its
    capabilities, ambient as the unit gives them (CAP_KILL: one every node has; the
    reader must drop it, and needs none to read the journal)."""
    props = [ln.strip() for ln in UNIT.read_text().splitlines()
             if ln.split("=", 1)[0] in SANDBOX]
    assert len({p.split("=", 1)[0] for p in props}) == len(SANDBOX), props
    return ["systemd-run", "--quiet", "--pipe", "--wait", "--collect",
            *(a for p in [*props, "CapabilityBoundingSet=CAP_KILL",
                                       "AmbientCapabilities=CAP_KILL"]
              for a in ("-p", shlex.quote(p))), *command]


def ssh_command(fleet: LocalFleet, node: str, *remote: str) -> list[str]:
    info = fleet.info()
    return ["ssh", "-F", "/dev/null", "-i", str(fleet.ssh_key), "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={fleet.known_hosts}", "-o",
            "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
            f"{info.get('ssh_user', 'root')}@{info['nodes'][node]['address']}", *remote]


def read_json(proc: subprocess.Popen[str], deadline: float) -> dict | None:
    assert proc.stdout is not None
    if not select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))[0]:
        return None
    line = proc.stdout.readline()
    return json.loads(line) if line else None


@pytest.mark.parametrize("sandbox", [False, True], ids=["plain", "agent-unit-sandbox"])
def test_the_journal_follower_names_the_sshd_session_of_a_login(fleet: LocalFleet,
                                                                sandbox: bool) -> None:
    source = Path(journal_follower.__file__).read_text() + DRIVER
    command = ["python3", "-u", "-c", shlex.quote(source)]
    follower = subprocess.Popen(
        ssh_command(fleet, "node1", *(sandboxed(command) if sandbox else command)),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        started = read_json(follower, time.monotonic() + 60)
        assert started is not None and "journalctl_pid" in started, started
        if sandbox:  # really sandboxed, and journalctl runs without the agent's capability
            assert started["agent"]["NoNewPrivs"] == "1", started
            assert started["agent"]["Seccomp"] == "2", started
            assert started["agent"]["CapEff"] == f"{1 << 5:016x}", started  # CAP_KILL
            assert int(started["journalctl"]["CapEff"], 16) == 0, started
            assert int(started["journalctl"]["CapAmb"], 16) == 0, started
        # a login whose shell prints its ancestors (pid, title) up to init: the session's
        # sshd process is the one just below the listener, as the exec monitor finds it
        login = subprocess.run(ssh_command(
            fleet, "node1", "p=$$; while [ $p -gt 1 ]; do echo $p $(tr '\\0' ' ' "
            "< /proc/$p/cmdline); p=$(awk '/^PPid:/{print $2}' /proc/$p/status); done"),
            capture_output=True, text=True, timeout=60, check=True)
        chain = [ln.split(" ", 1) for ln in login.stdout.splitlines()]
        listener = next(i for i, (_, title) in enumerate(chain) if "[listener]" in title)
        monitor_pid, title = chain[listener - 1]
        assert title.startswith("sshd: root"), chain
        found = None
        deadline = time.monotonic() + 30
        while found is None and (msg := read_json(follower, deadline)) is not None:
            parsed = parse_line(msg.get("line", ""))
            if parsed is not None and parsed[0] == int(monitor_pid):
                found = (msg["line"], parsed)
        assert found is not None, f"no Accepted line of sshd[{monitor_pid}] from the journal"
        line, (pid, session) = found
        assert session is None  # the lab's plain key: a login without a grant
        assert f" sshd[{pid}]: Accepted publickey for root from " in line
        # closing the follower ends its journalctl (nothing left on the node)
        assert follower.stdin is not None
        follower.stdin.write("stop\n")
        follower.stdin.flush()
        deadline = time.monotonic() + 30
        while (msg := read_json(follower, deadline)) is not None and "closed" not in msg:
            pass
        assert msg == {"closed": True}
        gone = subprocess.run(ssh_command(
            fleet, "node1", f"test ! -e /proc/{started['journalctl_pid']}"), timeout=60,
            check=False)
        assert gone.returncode == 0
    finally:
        if follower.poll() is None:
            follower.kill()
        follower.wait()
