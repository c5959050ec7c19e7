"""The agent daemon as it runs on a node: a real process in namespace b of a veth pair,
its control socket driven by the real ``aegis-agent`` CLI, real TCP from namespace a,
the exec monitor on the real kernel, and its spool on disk.

Everything is named with the run prefix (pins, temp dir) and removed afterwards: the
daemon is stopped, then ``aegis-agent detach`` removes what it attached.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from test_exec_connect_monitors import v2_root
from test_segment_netns import Lab, _enter, _live_link_ids

from aegis_agent.bpf import syscall
from aegis_agent.spool import HEADER, Spool
from harness import VENV_BIN, NetnsPair, wait_until

pytestmark = pytest.mark.integration

AGENT = str(VENV_BIN / "aegis-agent")
EDGE = "192.0.2.1 -> 192.0.2.2 tcp/8080"


@dataclass
class Daemon:
    lab: Lab
    root: Path
    prefix: str
    proc: subprocess.Popen | None = None
    log: list[Path] = field(default_factory=list)

    @property
    def config(self) -> Path:
        return self.root / "agent.yaml"

    @property
    def spool_dir(self) -> Path:
        return self.root / "spool"

    def write_config(self) -> None:
        cfg = {
            "node_id": f"{self.prefix}-node",
            "segment": {"interface": self.lab.pair.b_if,
                        "pin_dir": f"/sys/fs/bpf/{self.prefix}-seg",
                        "management": ["192.0.2.1 tcp/2222"], "sweep_interval": 0.2},
            "monitors": {"exec": True, "connect": True,
                         "pin_dir": f"/sys/fs/bpf/{self.prefix}-mon"},
            "spool": {"dir": str(self.spool_dir), "segment_bytes": 65536},
            "control": {"socket": str(self.root / "run" / "agent.sock")},
            "policy": [{"name": "no-evil", "kind": "exec",
                        "match": {"filename": [str(self.root / "evil")]}, "action": "deny"}],
        }
        self.config.write_text(yaml.safe_dump(cfg))

    def start(self) -> None:
        log = self.root / f"daemon-{len(self.log)}.log"
        self.log.append(log)
        self.proc = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{self.lab.pair.b}", AGENT, "--config",
             str(self.config), "run"],
            stdout=log.open("w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited {self.proc.returncode}: {log.read_text()}")
            if self.cli("status", check=False)[0] == 0:
                return
            time.sleep(0.1)
        raise AssertionError(f"agent did not come up: {log.read_text()}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        rc = self.proc.wait(timeout=30)
        self.proc = None
        return rc

    def cli(self, *args: str, check: bool = True) -> tuple[int, object, str]:
        p = subprocess.run([AGENT, "--config", str(self.config), *args], capture_output=True,
                           text=True, timeout=60, check=False)
        if check and p.returncode:
            raise AssertionError(f"aegis-agent {' '.join(args)}: {p.stderr}")
        out: object = p.stdout
        with contextlib.suppress(json.JSONDecodeError):
            out = json.loads(p.stdout)
        return p.returncode, out, p.stderr

    def events(self) -> list[dict]:
        _rc, out, _err = self.cli("events", "--limit", "10000", "--after", "-1")
        assert isinstance(out, str)
        return [json.loads(line) for line in out.splitlines()]


def daemon_lab(netns: NetnsPair) -> Iterator[Daemon]:
    """A configured daemon (not started) in namespace b, removed afterwards: the body of
    the ``daemon`` fixture here and in test_segment_lockout."""
    prefix = netns.a.removesuffix("-a")
    root = Path(tempfile.mkdtemp(prefix=f"{prefix}-agent-"))
    a = ThreadPoolExecutor(1, initializer=_enter, initargs=(netns.a,))
    b = ThreadPoolExecutor(1, initializer=_enter, initargs=(netns.b,))
    d = Daemon(Lab(netns, f"/sys/fs/bpf/{prefix}-seg", a, b), root, prefix)
    d.write_config()
    try:
        yield d
    finally:
        if d.proc is not None:
            d.proc.kill()
            d.proc.wait()
        rc, _out, err = d.cli("detach", check=False)
        left = [pin for pin in (f"/sys/fs/bpf/{prefix}-seg", f"/sys/fs/bpf/{prefix}-mon")
                if Path(pin).exists() and any(p.is_file() for p in Path(pin).rglob("*"))]
        for pin in (f"/sys/fs/bpf/{prefix}-seg", f"/sys/fs/bpf/{prefix}-mon"):
            shutil.rmtree(pin, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
        a.shutdown()
        b.shutdown()
        # cleaned up either way, but a detach that failed or left pins fails the test
        assert rc == 0 and not left, f"aegis-agent detach: exit {rc}, left {left}: {err}"


@pytest.fixture
def daemon(netns: NetnsPair) -> Iterator[Daemon]:
    yield from daemon_lab(netns)


def _wait_for(pred, timeout: float = 5.0) -> bool:
    return wait_until(pred, timeout, 0.05)


def test_grant_revoke_quarantine_release_through_the_cli(daemon: Daemon) -> None:
    daemon.start()
    lab = daemon.lab
    lab.listen("b", "192.0.2.2", 8080)
    lab.listen("b", "192.0.2.2", 2222)
    assert not lab.reachable(8080)  # default drop
    _rc, out, _e = daemon.cli("grant", EDGE, "--ttl", "600")
    assert out == {"granted": EDGE}
    assert lab.reachable(8080)
    _rc, edges, _e = daemon.cli("edges")
    assert [e["edge"] for e in edges] == [EDGE] and edges[0]["state"] == "active"
    _rc, pol, _e = daemon.cli("quarantine")
    assert pol["quarantine"] is True
    assert not lab.reachable(8080)
    assert lab.reachable(2222)  # the management path stays
    daemon.cli("release")
    assert lab.reachable(8080)
    daemon.cli("revoke", EDGE)
    assert not lab.reachable(8080)
    whats = [e["data"].get("what") for e in daemon.events() if e["kind"] == "agent"]
    assert {"start", "grant", "quarantine", "release", "revoke"} <= set(whats)


def test_a_short_grant_expires_and_is_swept(daemon: Daemon) -> None:
    daemon.start()
    daemon.lab.listen("b", "192.0.2.2", 8080)
    daemon.cli("grant", EDGE, "--ttl", "1")
    assert daemon.lab.reachable(8080)
    assert _wait_for(lambda: not daemon.lab.reachable(8080), 5)
    assert _wait_for(lambda: daemon.cli("edges")[1] == [], 5)
    assert any(e["data"].get("what") == "edges_expired" for e in daemon.events())


def test_restart_keeps_enforcement(daemon: Daemon) -> None:
    daemon.start()
    lab = daemon.lab
    lab.listen("b", "192.0.2.2", 8080)
    lab.listen("b", "192.0.2.2", 9090)
    daemon.cli("grant", EDGE)
    assert daemon.stop() == 0
    # the daemon is gone: the kernel keeps enforcing what it was told
    assert lab.reachable(8080) and not lab.reachable(9090)
    rc, _o, err = daemon.cli("status", check=False)
    assert rc == 1 and "not running" in err
    daemon.start()
    _rc, status, _e = daemon.cli("status")
    assert status["segment"]["attached"] is True and status["segment"]["edges"] == 1
    assert lab.reachable(8080) and not lab.reachable(9090)
    attached = [e for e in daemon.events() if e["data"].get("what") == "segment_attached"]
    assert [e["data"]["reused"] for e in attached] == [False, True]


def test_restart_on_pins_of_an_older_build_migrates_them(daemon: Daemon) -> None:
    """Pins left by the build before the fast path (which had no seg_mgmt_nets; stand-in:
    this build's pins with that one unpinned) are recreated with the policy carried over
    and the live links swapped to the new programs: the agent starts, and enforcement is
    what it was, with no moment without a filter."""
    daemon.start()
    lab = daemon.lab
    lab.listen("b", "192.0.2.2", 8080)
    lab.listen("b", "192.0.2.2", 9090)
    daemon.cli("grant", EDGE, "--ttl", "600")
    assert daemon.stop() == 0
    pin = Path(lab.pin)
    old_links = _pinned_link_ids(pin)
    (pin / "seg_mgmt_nets").unlink()
    daemon.start()
    _rc, status, _e = daemon.cli("status")
    assert status["segment"]["attached"] is True and status["segment"]["edges"] == 1
    assert status["segment"]["management"] == ["192.0.2.1 tcp/2222"]
    assert (pin / "seg_mgmt_nets").exists()
    # the same links (never detached), now running the programs pinned with the new maps
    assert _pinned_link_ids(pin) == old_links
    for link, prog in (("link_xdp", "seg_ingress"), ("link_tc", "seg_egress")):
        lfd, pfd = syscall.obj_get(str(pin / link)), syscall.obj_get(str(pin / prog))
        try:
            assert syscall.link_info(lfd).prog_id == syscall.prog_info(pfd).id
        finally:
            os.close(lfd)
            os.close(pfd)
    assert not Path(f"{lab.pin}-new").exists()
    assert lab.reachable(8080) and not lab.reachable(9090)
    log = daemon.log[-1].read_text()
    assert "come from an older build" in log and "recreated" in log
    print(next(line for line in log.splitlines() if "recreated" in line))


def _pinned_link_ids(pin_dir: Path) -> set[int]:
    """The kernel ids of every BPF link pinned under ``pin_dir``."""
    ids = set()
    for path in pin_dir.rglob("link_*") if pin_dir.exists() else ():
        fd = syscall.obj_get(str(path))
        try:
            ids.add(syscall.link_info(fd).id)
        finally:
            os.close(fd)
    return ids


def test_detach_removes_every_link_and_pin_it_made(daemon: Daemon) -> None:
    """``aegis-agent detach`` after the daemon stopped: its exit status and its work are
    checked here, before the fixture's own clean-up could hide a detach that failed."""
    daemon.start()
    lab = daemon.lab
    lab.listen("b", "192.0.2.2", 8080)
    assert not lab.reachable(8080)  # the filter is on
    pins = [Path(lab.pin), Path(f"/sys/fs/bpf/{daemon.prefix}-mon")]
    links = set().union(*map(_pinned_link_ids, pins))
    assert len(links) >= 4, links  # xdp, tcx, exec and connect tracepoints
    assert links <= _live_link_ids()
    assert daemon.stop() == 0
    assert lab.reachable(8080) is False  # enforcement outlived the daemon

    rc, out, err = daemon.cli("detach", check=False)
    assert rc == 0, err
    assert out == {"segment": "detached", "exec": "detached", "connect": "detached"}
    assert not Path(lab.pin).exists()
    assert not [p for p in pins[1].rglob("*") if not p.is_dir()], list(pins[1].rglob("*"))
    assert not links & _live_link_ids()  # no link survives unpinned either
    link = lab.pair.run(lab.pair.b, "ip", "link", "show", "dev", lab.pair.b_if).stdout
    assert "xdp" not in link
    net = lab.pair.run(lab.pair.b, "bpftool", "net", "show", "dev", lab.pair.b_if).stdout
    assert "seg_" not in net and "tcx" not in net
    assert lab.reachable(8080)  # no filter: open again


def test_policy_denies_an_exec_and_events_reach_the_spool(daemon: Daemon) -> None:
    daemon.start()
    evil = daemon.root / "evil"
    shutil.copy("/usr/bin/touch", evil)
    first = subprocess.run([str(evil), str(daemon.root / "marker-1")], check=False)
    # not on the deny set yet: it runs, the policy sees it and acts (and kills it if it
    # still runs by then: test_exec_kill covers that with a program that does not end)
    assert first.returncode in (0, -signal.SIGKILL)

    assert _wait_for(lambda: any(e["kind"] == "policy" for e in daemon.events()), 10)
    second = subprocess.run([str(evil), str(daemon.root / "marker-2")], check=False)
    assert second.returncode == -signal.SIGKILL
    assert not (daemon.root / "marker-2").exists()
    assert _wait_for(lambda: any(e["kind"] == "exec_denied" for e in daemon.events()), 5)
    events = daemon.events()
    execs = [e for e in events if e["kind"] == "exec" and e["data"]["filename"] == str(evil)]
    assert execs and execs[0]["data"]["ppid"] == os.getpid()
    (pol,) = [e for e in events if e["kind"] == "policy"]
    assert pol["data"]["rule"] == "no-evil" and "denied" in pol["data"]["result"]
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(set(seqs))


def test_corrupt_spool_is_set_aside_and_the_agent_keeps_serving(daemon: Daemon) -> None:
    daemon.start()
    daemon.lab.listen("b", "192.0.2.2", 8080)
    for i in range(30):
        daemon.cli("grant", f"192.0.2.1 -> 192.0.2.2 tcp/{9000 + i}")
    daemon.cli("grant", EDGE)
    assert daemon.stop() == 0
    (seg,) = sorted(daemon.spool_dir.glob("seg-*.log"))[:1]
    data = bytearray(seg.read_bytes())
    data[HEADER.size + 5] ^= 0xFF
    seg.write_bytes(bytes(data))
    daemon.start()
    assert daemon.lab.reachable(8080)  # enforcement untouched
    (report,) = [e for e in daemon.events() if e["data"].get("what") == "spool_corrupt"]
    assert report["severity"] == "critical" and "checksum" in report["data"]["reason"]
    assert Path(report["data"]["moved_to"]).is_file()
    _rc, status, _e = daemon.cli("status")
    assert status["spool"]["corrupt_set_aside"] == 1


def test_kill_9_mid_write_loses_no_acknowledged_event(daemon: Daemon) -> None:
    """A writer appends in batches and prints each batch's last seq after the append
    returned (fsync'd); kill -9 lands mid-burst. Every printed seq is there exactly once."""
    spool = daemon.root / "burst"
    code = (
        "import sys\n"
        "from aegis_agent.spool import Spool\n"
        "from aegis_protocol.events import Event\n"
        f"sp = Spool({str(spool)!r}, segment_bytes=1 << 16)\n"
        "for i in range(100000):\n"
        "    seqs = sp.append([Event(ts_ns=i, kind='exec', data={'i': i * 10 + j})"
        " for j in range(10)])\n"
        "    print(seqs[-1], flush=True)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    acked = []
    while len(acked) < 300:
        acked.append(int(proc.stdout.readline()))
    proc.kill()
    proc.wait()
    acked += [int(x) for x in proc.stdout.read().split()]
    sp = Spool(spool, segment_bytes=1 << 16)
    records = sp.read(-1, 10_000_000)
    seqs = [s for s, _e in records]
    assert sp.problems == []
    assert len(seqs) == len(set(seqs))
    assert seqs == list(range(len(seqs)))
    assert acked[-1] <= seqs[-1]  # everything acknowledged is there
    assert [e.data["i"] for _s, e in records] == seqs  # and in order, none twice

    # the daemon too: kill -9, restart, spool and enforcement intact
    daemon.start()
    daemon.cli("grant", EDGE)
    before = len(daemon.events())
    daemon.stop(signal.SIGKILL)
    daemon.start()
    after = daemon.events()
    assert len(after) > before and [e["seq"] for e in after] == list(range(len(after)))


def test_bad_input_gets_clear_errors(daemon: Daemon) -> None:
    bad = daemon.root / "bad.yaml"
    bad.write_text("segment: {mode: enforced}\nspoool: {}\n")
    p = subprocess.run([AGENT, "check-config", str(bad)], capture_output=True, text=True,
                       check=False)
    assert p.returncode == 2
    assert "segment.mode" in p.stderr and "spoool: unknown key" in p.stderr
    assert daemon.cli("check-config")[0] == 0
    rc, _o, err = daemon.cli("status", check=False)
    assert rc == 1 and "not running" in err
    daemon.start()
    rc, _o, err = daemon.cli("grant", "192.0.2.1 => 192.0.2.2", check=False)
    assert rc == 1 and "missing '->'" in err
    rc, _o, err = daemon.cli("deny-exec", str(daemon.root / "missing"), check=False)
    assert rc == 1 and "cannot stat" in err
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(daemon.root / "run" / "agent.sock"))
        s.sendall(b"not json\n" + json.dumps({"cmd": "grant", "args": {"edge": 5}}).encode()
                  + b"\n")
        reader = s.makefile()
        answers = reader.readline(), reader.readline()
    assert "not JSON" in answers[0]
    assert "wrong type" in answers[1]
    assert daemon.cli("status")[0] == 0  # still serving


def test_connect_events_reach_the_spool(daemon: Daemon) -> None:
    daemon.start()
    with socket.create_server(("127.0.0.1", 0)) as srv:
        port = srv.getsockname()[1]
        code = f"import socket; socket.create_connection(('127.0.0.1', {port})).close()"
        proc = subprocess.Popen([sys.executable, "-c", code])
        proc.wait()

    def spooled() -> list[dict]:
        return [e for e in daemon.events()
                if e["kind"] == "connect" and e["data"]["dport"] == port]

    assert _wait_for(lambda: bool(spooled()), 5)
    (ev,) = spooled()
    assert ev["data"]["pid"] == proc.pid and ev["data"]["daddr"] == "127.0.0.1"
    assert ev["data"]["proto"] == "tcp"



# -- one enforcement path -----------------------------------------------------------------
def test_socket_order_and_policy_record_one_event_kind_with_their_source(
        daemon: Daemon, tmp_path: Path) -> None:
    """The same verb from the control socket, a signed order and the local policy runs
    through one Enforcement: the same event (kind agent, what = the verb) with its source;
    the socket, the developer CLI and the order acknowledgment carry the same result."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from aegis_agent.bpf import SegmentFilter
    from aegis_agent.control_server import ControlServer
    from aegis_agent.enforcement import Enforcement
    from aegis_agent.orders import FileReplayGuard, OrderExecutor, order_handlers
    from aegis_agent.policy import Decision, respond
    from aegis_protocol.events import Event
    from aegis_protocol.orders import new_order, sign_order, verify_ack

    lab = daemon.lab
    lab.listen("b", "192.0.2.2", 8080)
    lab.listen("b", "192.0.2.2", 8081)
    lab.agent("attach")  # the developer CLI (aegis-agent segment) in namespace b
    recorded: list[Event] = []
    seg = SegmentFilter(None, lab.pin)
    try:
        enforcement = Enforcement(seg, None, None, recorded.extend)
        server = ControlServer(tmp_path / "sock", enforcement, Spool(tmp_path / "spool"),
                               dict)
        controller, node = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
        executor = OrderExecutor("n1", controller.public_key(), node,
                                 FileReplayGuard(tmp_path / "nonces.json"),
                                 order_handlers(enforcement))

        by_socket = server.answer(json.dumps({"cmd": "grant", "args": {"edge": EDGE}}).encode())
        assert by_socket == {"ok": True, "result": {"granted": EDGE}}
        other = "192.0.2.1 -> 192.0.2.2 tcp/8081"
        ack = verify_ack(executor.execute(sign_order(controller, new_order(
            "n1", "grant", {"edge": other, "ttl": 600}))), node.public_key())
        assert ack.status == "done", ack.detail
        assert lab.reachable(8080) and lab.reachable(8081)
        by_cli = lab.agent("grant", EDGE, netns=False)  # a re-grant, from another process
        assert json.loads(ack.detail) == {"granted": other}
        assert by_cli.keys() == json.loads(ack.detail).keys() == by_socket["result"].keys()

        drop = Event(ts_ns=1, kind="drop", data={"src": "192.0.2.1"})
        assert "quarantined" in respond(Decision("scan", "quarantine", drop), enforcement)
        assert not lab.reachable(8080)
        assert server.answer(b'{"cmd": "release"}')["result"]["quarantine"] is False
        assert lab.reachable(8080)
        ack = verify_ack(executor.execute(sign_order(controller, new_order(
            "n1", "quarantine", {"level": "hard"}))), node.public_key())
        assert json.loads(ack.detail)["quarantine"] is True
        assert not lab.reachable(8080)
    finally:
        seg.close()
        lab.agent("detach", check=False)

    seen = [(e.kind, e.data["what"], e.data["source"]) for e in recorded]
    assert seen == [("agent", "grant", "cli"), ("agent", "grant", "order"),
                    ("agent", "quarantine", "policy"), ("agent", "release", "cli"),
                    ("agent", "quarantine", "order")]
    assert recorded[1].data["edge"] == other and recorded[4].data["level"] == "hard"


def test_policy_quarantines_a_cgroup_and_the_cli_releases_it(daemon: Daemon) -> None:
    """A connect rule with action deny quarantines the connecting process's cgroup (the
    policy path); ``aegis-agent release-cgroup`` lets it connect again (the CLI path)."""
    cgroups = v2_root()
    with socket.create_server(("127.0.0.1", 0)) as trigger, \
            socket.create_server(("127.0.0.1", 0)) as other:
        tport, oport = trigger.getsockname()[1], other.getsockname()[1]
        cfg = yaml.safe_load(daemon.config.read_text())
        cfg["policy"].append({"name": "no-trigger", "kind": "connect",
                              "match": {"dport": [tport]}, "action": "deny"})
        daemon.config.write_text(yaml.safe_dump(cfg))
        cg = cgroups / f"{daemon.prefix}-q"
        cg.mkdir()
        try:
            daemon.start()
            code = (f"import os, socket, time\n"
                    f"open('{cg}/cgroup.procs', 'w').write(str(os.getpid()))\n"
                    f"socket.create_connection(('127.0.0.1', {tport}), timeout=2).close()\n"
                    f"for _ in range(100):\n"
                    f"    try:\n"
                    f"        socket.create_connection(('127.0.0.1', {oport}), timeout=2)"
                    f".close()\n"
                    f"    except PermissionError:\n"
                    f"        print('denied', flush=True)\n"
                    f"        break\n"
                    f"    time.sleep(0.1)\n")
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                 timeout=60, check=True).stdout
            assert out.strip() == "denied"  # the policy quarantined the process's cgroup
            _rc, status, _e = daemon.cli("release-cgroup", str(cg))
            assert status == {"released": True, "cgroups": []}
            again = (f"import os, socket\n"
                     f"open('{cg}/cgroup.procs', 'w').write(str(os.getpid()))\n"
                     f"socket.create_connection(('127.0.0.1', {oport}), timeout=2).close()\n")
            subprocess.run([sys.executable, "-c", again], timeout=60, check=True)
            rc, _o, err = daemon.cli("release-cgroup", "/tmp", check=False)
            assert rc == 1 and "not a cgroup" in err
            events = daemon.events()
        finally:
            for pid in (cg / "cgroup.procs").read_text().split():
                os.kill(int(pid), signal.SIGKILL)
            cg.rmdir()
    verbs = [(e["data"]["what"], e["data"]["source"]) for e in events
             if e["kind"] == "agent" and "source" in e["data"]]
    assert verbs == [("quarantine-cgroup", "policy"), ("release-cgroup", "cli")]
    (pol,) = [e for e in events if e["kind"] == "policy"]
    assert pol["data"]["rule"] == "no-trigger" and str(cg) in pol["data"]["result"]
