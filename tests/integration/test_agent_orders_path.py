"""The agent's controller link end to end, with the real daemon (real BPF, in namespace b
of a veth pair) and a real controller (in namespace a): an operator's signed quarantine,
release and revoke executed in the kernel, automatic certificate renewal at
``renew_before``, periodic re-attestation, back-off while the controller is unreachable
and the spool's high-water alarm meanwhile, the ``denied-connect`` and ``spool-corrupt``
incident rules raised from real agent events; and the watchdog's CPU limit.

One node and one controller serve the module (the tests run in file order and leave the
node as the next one expects it); its config makes everything periodic happen within
seconds: certificates renewed about every 3 s, attestation every second."""

from __future__ import annotations

import contextlib
import datetime
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml
from cryptography import x509
from test_agent_controller import _connect, _stored
from test_agent_daemon import AGENT, EDGE, Daemon, daemon  # noqa: F401
from test_segment_netns import Lab, _enter

from aegis_agent.policy import CGROUP_ROOTS
from aegis_agent.spool import HEADER, Spool
from conftest import sub_prefix
from harness import NetnsPair, netns_pair, wait_until
from harness_controller import Server, controller_server, operator_client

pytestmark = pytest.mark.integration

CERT_LIFETIME = 24 * 3600  # aegis_controller.pki.NODE_CERT_HOURS
RENEW_AFTER = 3  # seconds after issue: renew_before = lifetime - this
MAX_BACKOFF = 3
MANAGEMENT_PORT = 2222  # the daemon config's management peer: 192.0.2.1 tcp/2222


@dataclass
class Node:
    daemon: Daemon
    server: Server
    node_id: str

    def state(self) -> str:
        return self._one("SELECT state FROM nodes WHERE node_id = :n")

    def _one(self, sql: str, **params: object):
        with self.server.engine().connect() as conn:
            return conn.execute(sa.text(sql), {"n": self.node_id, **params}).scalar_one()

    def ledger(self, kind: str) -> list[dict]:
        """Bodies of the node's ledger records of ``kind``, oldest first."""
        with self.server.engine().connect() as conn:
            rows = conn.execute(sa.text(
                "SELECT body FROM ledger_records WHERE subject = :n AND kind = :k "
                "ORDER BY seq"), {"n": self.node_id, "k": kind}).scalars().all()
        return [json.loads(b) for b in rows]

    def incidents(self, rule: str) -> list[dict]:
        with self.server.engine().connect() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.text(
                "SELECT * FROM incidents WHERE node_id = :n AND rule = :r"),
                {"n": self.node_id, "r": rule})]

    def order(self, kind: str, **args: object) -> str:
        """An operator's order (API, operator certificate, from namespace a); its id."""
        def post() -> str:
            with operator_client(self.server) as op:
                r = op.post("/v1/orders", json={"node_id": self.node_id, "kind": kind,
                                                "args": args})
            assert r.status_code == 201, r.text
            return r.json()["order"]["id"]
        return self.daemon.lab.in_a.submit(post).result()

    def order_status(self, order_id: str) -> tuple[str, str | None]:
        with self.server.engine().connect() as conn:
            row = conn.execute(sa.text("SELECT status, detail FROM orders WHERE order_id = :o"),
                               {"o": order_id}).one()
        return row.status, row.detail

    def executed(self, order_id: str) -> str:
        """Wait for the node's acknowledgment of ``order_id``; its detail (must be done)."""
        assert wait_until(lambda: self.order_status(order_id)[0] != "pending", 30), order_id
        status, detail = self.order_status(order_id)
        assert status == "done", detail
        return detail or ""

    def link_ok(self) -> bool:
        return self.daemon.cli("status")[1]["controller"].get("error") is None


def _agent_config(d: Daemon) -> None:
    cfg = yaml.safe_load(d.config.read_text())
    # a spool whose high-water mark (about 100 KiB) a burst of a few hundred execs crosses,
    # far below its bound (4 MiB): the execs of the whole host during the outage fit
    cfg["spool"].update(max_bytes=4 << 20, segment_bytes=16384, high_water=0.025)
    d.config.write_text(yaml.safe_dump(cfg))


@contextlib.contextmanager
def _module_daemon(pair: NetnsPair) -> Iterator[Daemon]:
    """What the ``daemon`` fixture gives one test, for the whole module."""
    prefix = pair.a.removesuffix("-a")
    with tempfile.TemporaryDirectory(prefix=f"{prefix}-agent-") as root, \
            ThreadPoolExecutor(1, initializer=_enter, initargs=(pair.a,)) as in_a, \
            ThreadPoolExecutor(1, initializer=_enter, initargs=(pair.b,)) as in_b:
        d = Daemon(Lab(pair, f"/sys/fs/bpf/{prefix}-seg", in_a, in_b), Path(root), prefix)
        d.write_config()
        try:
            yield d
        finally:
            if d.proc is not None:
                d.stop(signal.SIGKILL)
            detached = d.cli("detach", check=False)
            for pin in (d.lab.pin, f"/sys/fs/bpf/{prefix}-mon"):
                shutil.rmtree(pin, ignore_errors=True)
            assert detached[0] == 0, detached


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    """An enrolled node, trusted against a profile pinned from its first measurement. The
    controller is deliberately NOT listed among the management peers: the agent's lock-out
    guard must keep the link that can release a quarantine on its own."""
    with netns_pair(sub_prefix()) as pair, _module_daemon(pair) as d, \
            controller_server(d.prefix + "c", None, host=pair.a_addr, netns=pair.a) as srv:
        _agent_config(d)
        assert not any(str(srv.port) in peer for peer in
                       yaml.safe_load(d.config.read_text())["segment"]["management"])
        node_id, _token = _connect(d, srv, interval=0.3, attest_interval=1.0,
                                   renew_before=float(CERT_LIFETIME - RENEW_AFTER),
                                   max_backoff=float(MAX_BACKOFF))
        n = Node(d, srv, node_id)
        assert wait_until(lambda: n.ledger("attestation"), 60), d.log[-1].read_text()
        profile = d.root / "profile.json"
        profile.write_text("{}")
        pinned = srv.ctl("profile", "set", node_id, str(profile), "--pin-bpf")
        assert pinned.returncode == 0, pinned.stderr
        assert wait_until(lambda: n.state() == "trusted", 30), n.state()
        d.lab.listen("b", d.lab.pair.b_addr, 8080)
        d.lab.listen("b", d.lab.pair.b_addr, MANAGEMENT_PORT)
        yield n


def test_signed_quarantine_release_and_revoke_run_in_the_kernel(node: Node) -> None:
    lab = node.daemon.lab
    assert not lab.reachable(8080)  # default drop
    node.executed(node.order("grant", edge=EDGE, ttl=600))
    assert lab.reachable(8080)

    detail = node.executed(node.order("quarantine", level="hard", reason="operator test"))
    assert json.loads(detail)["quarantine"] is True
    assert not lab.reachable(8080)  # the granted edge is cut ...
    assert lab.reachable(MANAGEMENT_PORT)  # ... the management path stays
    assert node.daemon.cli("status")[1]["segment"]["quarantine"] is True
    assert node.state() == "quarantined"

    detail = node.executed(node.order("release", reason="operator test"))
    assert json.loads(detail)["quarantine"] is False
    assert lab.reachable(8080)
    assert node.state() == "trusted"

    node.executed(node.order("revoke", edge=EDGE))
    assert not lab.reachable(8080)
    assert node.daemon.cli("edges")[1] == []
    acks = [b["status"] for b in node.ledger("ack")]
    assert acks.count("done") >= 4, acks
    # each verb ran once, from the order, and its agent event reached the controller
    for verb in ("grant", "quarantine", "release", "revoke"):
        assert wait_until(lambda v=verb: _stored(node.server, node.node_id, v,
                                                 source="order") == 1, 30), verb


def _serial(pem: bytes) -> str:
    return format(x509.load_pem_x509_certificate(pem).serial_number, "x")


def test_certificate_is_renewed_at_renew_before_and_the_link_goes_on(node: Node) -> None:
    cert = node.daemon.root / "agent-state" / "node.pem"
    first = _serial(cert.read_bytes())
    rotated = len(node.ledger("enrollment"))
    assert wait_until(lambda: sum(b.get("event") == "certificate_rotated"
                                  for b in node.ledger("enrollment")[rotated:]) >= 2, 30)
    assert wait_until(lambda: _serial(cert.read_bytes()) != first, 10)
    # the controller's current serial is the node's newest certificate on disk, which it
    # keeps using: new events keep arriving and the link reports no error
    assert wait_until(lambda: node._one("SELECT cert_serial FROM nodes WHERE node_id = :n")
                      == _serial(cert.read_bytes()), 10)
    seen = node._one("SELECT count(*) FROM events WHERE node_id = :n")
    assert wait_until(lambda: node._one("SELECT count(*) FROM events WHERE node_id = :n")
                      > seen, 30)
    assert wait_until(node.link_ok, 10), node.daemon.cli("status")[1]["controller"]
    bodies = [b for b in node.ledger("enrollment") if b.get("event") == "certificate_rotated"]
    assert all(b["previous_serial"] != b["cert_serial"] for b in bodies)


def test_attestation_is_repeated_every_attest_interval(node: Node) -> None:
    orders = node._one("SELECT count(*) FROM orders WHERE node_id = :n AND kind = 'attest'")
    before = len(node.ledger("attestation"))
    assert wait_until(lambda: len(node.ledger("attestation")) >= before + 3, 30)
    reports = [b for b in node.ledger("attestation")[before:] if "verdict" in b]
    assert len(reports) >= 3 and all(b["verdict"] == "match" for b in reports), reports
    assert node.state() == "trusted"
    # none of them asked for by an order: the agent's own period
    assert node._one("SELECT count(*) FROM orders WHERE node_id = :n AND kind = 'attest'") \
        == orders


def _cgroup_root() -> Path:
    """The cgroup v2 tree the agent's connect deny uses (no v2 tree: the test fails)."""
    root = next((r for r in CGROUP_ROOTS if (r / "cgroup.procs").is_file()), None)
    assert root is not None, f"no cgroup v2 hierarchy at any of {CGROUP_ROOTS}"
    return root


def test_a_denied_connect_raises_the_denied_connect_incident(node: Node) -> None:
    cg = _cgroup_root() / f"{node.daemon.prefix}-q"
    cg.mkdir()
    try:
        assert node.daemon.cli("quarantine-cgroup", str(cg))[0] == 0
        with socket.create_server(("127.0.0.1", 0)) as srv:
            port = srv.getsockname()[1]
            code = (f"import os, socket\n"
                    f"open('{cg}/cgroup.procs', 'w').write(str(os.getpid()))\n"
                    f"try:\n"
                    f"    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
                    f"except PermissionError:\n"
                    f"    print('denied')\n")
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                 timeout=60, check=True).stdout
        assert out.strip() == "denied"
        assert wait_until(lambda: node.incidents("denied-connect"), 30)
        (incident,) = node.incidents("denied-connect")
        assert f"127.0.0.1:{port}" in incident["summary"], incident
        assert incident["severity"] == "medium" and incident["order_id"] is None
    finally:
        node.daemon.cli("release-cgroup", str(cg), check=False)
        with contextlib.suppress(FileNotFoundError):
            for pid in (cg / "cgroup.procs").read_text().split():
                os.kill(int(pid), signal.SIGKILL)
        cg.rmdir()


_RETRY = re.compile(r"controller link failed; retrying in (\d+) s")


def _failures(log: Path, after: datetime.datetime) -> list[tuple[datetime.datetime, int]]:
    """(time, announced back-off) of each failed controller round logged after ``after``."""
    out = []
    for line in log.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            doc = json.loads(line)
            m = _RETRY.fullmatch(str(doc.get("msg")))
            at = datetime.datetime.strptime(doc.get("ts", ""), "%Y-%m-%dT%H:%M:%S.%fZ")
            if m and at > after:
                out.append((at, int(m.group(1))))
    return out


def test_unreachable_controller_backs_off_spool_alarms_and_all_arrives_after(
        node: Node) -> None:
    """With the controller down, the link's retries grow apart up to ``max_backoff``; a
    burst of execs meanwhile crosses the spool's high-water mark, which the agent reports;
    when the controller is back the link recovers and the alarm and the whole burst reach
    it, none dropped."""
    d, srv = node.daemon, node.server
    log = d.log[-1]
    marker = d.root / "hw-marker"
    shutil.copy("/bin/true", marker)
    down_at = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    srv.kill()
    try:
        burst = subprocess.run(["sh", "-c", f'i=0; while [ $i -lt 600 ]; do "{marker}"; '
                                            'i=$((i+1)); done'], timeout=120, check=False)
        assert burst.returncode == 0
        assert wait_until(lambda: len(_failures(log, down_at)) >= 6, 60), \
            _failures(log, down_at)
        alarms = [e for e in d.events() if e["data"].get("what") == "spool_high_water"]
        assert alarms, d.cli("status")[1]["spool"]
    finally:
        srv.start()
    failures = _failures(log, down_at)
    backoffs = [b for _t, b in failures]
    assert backoffs[:3] == [1, 2, MAX_BACKOFF] and set(backoffs[3:]) == {MAX_BACKOFF}, backoffs
    gaps = [(b[0] - a[0]).total_seconds() for a, b in itertools.pairwise(failures)]
    # each retry waited at least the announced back-off, and later retries waited longer
    assert all(gap >= wait - 0.05 for gap, (_t, wait) in zip(gaps, failures, strict=False)), \
        (gaps, backoffs)
    assert min(gaps[2:]) > max(gaps[:1]), gaps

    assert wait_until(node.link_ok, 30), d.cli("status")[1]["controller"]
    alarm = alarms[0]["data"]
    assert alarm["used_bytes"] >= 0.025 * alarm["max_bytes"], alarm
    assert wait_until(lambda: _stored(srv, node.node_id, "spool_high_water") >= 1, 30)
    stored = sa.text("SELECT count(*) FROM events WHERE node_id = :n AND kind = 'exec' "
                     "AND data LIKE :p")

    def execs() -> int:
        with srv.engine().connect() as conn:
            return conn.execute(stored, {"n": node.node_id, "p": f'%"{marker}"%'}).scalar_one()

    assert wait_until(lambda: execs() == 600, 60), execs()
    assert d.cli("status")[1]["spool"]["dropped"] == 0


def test_a_corrupt_spool_at_start_raises_the_spool_corrupt_incident(node: Node) -> None:
    d = node.daemon
    assert d.stop() == 0
    # the newest segment in which another record follows the first: corruption, not a
    # write cut short
    seg = next(s for s in sorted(d.spool_dir.glob("seg-*.log"), reverse=True)
               if s.stat().st_size > HEADER.size + HEADER.unpack_from(s.read_bytes(), 0)[1])
    data = bytearray(seg.read_bytes())
    data[HEADER.size + 5] ^= 0xFF  # the first record's payload: a checksum mismatch
    seg.write_bytes(bytes(data))
    d.start()
    assert wait_until(lambda: node.incidents("spool-corrupt"), 30), d.log[-1].read_text()
    (incident,) = node.incidents("spool-corrupt")
    assert "checksum" in incident["summary"] and seg.name in incident["summary"], incident
    assert _stored(node.server, node.node_id, "spool_corrupt") == 1
    assert wait_until(node.link_ok, 10)


def test_the_watchdog_stops_an_agent_over_its_cpu_limit(daemon: Daemon) -> None:  # noqa: F811
    """Over ``max_cpu_percent`` for ``grace`` checks in a row: each check is logged and
    spooled, then the agent exits with status 3 (for systemd to restart it) and its
    enforcement stays in the kernel."""
    cfg = yaml.safe_load(daemon.config.read_text())
    cfg["watchdog"] = {"interval": 0.5, "max_cpu_percent": 1e-6, "grace": 4}
    daemon.config.write_text(yaml.safe_dump(cfg))
    log = daemon.root / "watchdog.log"
    daemon.proc = subprocess.Popen(
        ["nsenter", f"--net=/run/netns/{daemon.lab.pair.b}", AGENT, "--config",
         str(daemon.config), "run"], stdout=log.open("w"), stderr=subprocess.STDOUT)
    assert daemon.proc.wait(timeout=60) == 3, log.read_text()
    daemon.proc = None
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    over = [doc for doc in lines if doc["msg"].startswith("agent over its limits: cpu")]
    assert len(over) >= 4, [doc["msg"] for doc in lines]
    assert any("exiting so systemd restarts it" in doc["msg"] for doc in lines)
    spool = Spool(daemon.spool_dir)
    events = [e for _s, e in spool.read(-1, 100_000)]
    spool.close()
    strikes = [e for e in events if e.kind == "agent" and e.data.get("what") == "watchdog"]
    assert len(strikes) >= 4 and all("cpu" in str(e.data["over"]) for e in strikes)
    assert events[-1].data == {"what": "stop", "exit": 3}
    lab = daemon.lab
    lab.listen("b", lab.pair.b_addr, 8080)
    assert not lab.reachable(8080)  # the default drop is still enforced
