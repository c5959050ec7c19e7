"""The agent daemon and the controller together: the daemon (in namespace b of a veth
pair) enrolls with a one-time token, attests, forwards its spool and runs a signed grant
order from an operator, after which real TCP from namespace a passes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
import yaml
from test_agent_daemon import EDGE, Daemon, daemon  # noqa: F401

from harness import VENV_BIN, openbao_dev, wait_until
from harness_controller import Server, controller_server, operator_client

pytestmark = pytest.mark.integration
BAO = VENV_BIN / "bao"


def _wait(pred, timeout: float = 60) -> bool:
    return wait_until(pred, timeout)


@pytest.fixture
def server(daemon: Daemon) -> Iterator[Server]:  # noqa: F811
    """The controller in namespace a (192.0.2.1), where the node in b can reach it."""
    with controller_server(daemon.prefix + "c", None, host=daemon.lab.pair.a_addr,
                           netns=daemon.lab.pair.a) as srv:
        yield srv


def _connect(daemon: Daemon, server: Server, *, interval: float,  # noqa: F811
             token: str | None = None, **controller: object) -> tuple[str, Path]:
    """Point the daemon at the controller with a bootstrap token (a fresh one unless
    given) and start it; returns the node id (the daemon's configured one) and the token
    file."""
    node_id = f"{daemon.prefix}-node"
    token_file = daemon.root / "bootstrap-token"
    token_file.write_text(token or server.token(node_id))
    cfg = yaml.safe_load(daemon.config.read_text())
    cfg["controller"] = {"url": server.url, "ca_file": str(server.state / "ca" / "ca.pem"),
                         "token_file": str(token_file),
                         "state_dir": str(daemon.root / "agent-state"), "interval": interval,
                         **controller}
    daemon.config.write_text(yaml.safe_dump(cfg))
    daemon.start()
    return node_id, token_file


def _grant_from_a(daemon: Daemon, server: Server, node_id: str) -> int:  # noqa: F811
    """An operator's grant order for EDGE (port 8080 of the node), posted from namespace a;
    returns the HTTP status."""
    def post() -> int:
        with operator_client(server) as op:
            return op.post("/v1/orders", json={"node_id": node_id, "kind": "grant",
                                               "args": {"edge": EDGE, "ttl": 600}}).status_code
    return daemon.lab.in_a.submit(post).result()


def test_agent_enrolls_forwards_and_obeys_signed_orders(daemon: Daemon,  # noqa: F811
                                                        server: Server) -> None:
    node_id, token_file = _connect(daemon, server, interval=0.5)

    def node() -> dict:
        return json.loads(server.ctl("node", "show", node_id).stdout or "{}")

    assert _wait(lambda: node().get("state") == "enrolled" and node()["events"] > 0)
    assert not token_file.exists()  # the one-time token is gone from the node
    key = Path(daemon.root / "agent-state" / "identity.key")
    assert key.stat().st_mode & 0o777 == 0o600
    _rc, status, _e = daemon.cli("status")
    assert status["controller"]["error"] is None, status["controller"]

    daemon.lab.listen("b", "192.0.2.2", 8080)
    assert not daemon.lab.reachable(8080)
    assert _grant_from_a(daemon, server, node_id) == 201  # the operator, from namespace a
    assert _wait(lambda: daemon.lab.reachable(8080))
    orders = [json.loads(line) for line in server.ctl("orders").stdout.splitlines()]
    assert [(o["kind"], o["status"]) for o in orders] == [("grant", "done")]
    # the order and its effect are in the agent's own events too, forwarded once (read
    # at the controller: the spool drops acknowledged segments, and the exec monitor of
    # an agent in the host's PID namespace spools every exec on the machine)
    assert _wait(lambda: _stored(server, node_id, "grant", source="order") == 1)

    # on request: an attest order makes the agent measure now (no profile yet: enrolled)
    def create(kind: str, args: dict) -> int:
        def post() -> int:
            with operator_client(server) as op:
                return op.post("/v1/orders", json={"node_id": node_id, "kind": kind,
                                                   "args": args}).status_code
        return daemon.lab.in_a.submit(post).result()

    def done(kind: str) -> list[dict]:
        rows = [json.loads(line) for line in server.ctl("orders").stdout.splitlines()]
        return [o for o in rows if o["kind"] == kind and o["status"] != "pending"]

    assert create("attest", {"reason": "operator asked"}) == 201
    assert _wait(lambda: done("attest"))
    assert done("attest")[0]["status"] == "done" and "attested" in done("attest")[0]["detail"]

    # certificate rotation: a new key made on the node, a new certificate; the old one is
    # refused from then on although it has not expired
    state = daemon.root / "agent-state"
    old_cert, old_key = (state / "node.pem").read_bytes(), (state / "tls.key").read_bytes()
    assert create("rotate", {"what": "certificate"}) == 201
    assert _wait(lambda: done("rotate"))
    assert done("rotate")[0]["status"] == "done", done("rotate")
    assert (state / "node.pem").read_bytes() != old_cert
    assert (state / "tls.key").read_bytes() != old_key
    assert (state / "tls.key").stat().st_mode & 0o777 == 0o600
    (daemon.root / "old.pem").write_bytes(old_cert)
    (daemon.root / "old.key").write_bytes(old_key)

    def with_old_cert() -> tuple[int, str]:
        ctx = server.ca
        ctx.load_cert_chain(daemon.root / "old.pem", daemon.root / "old.key")
        with httpx.Client(base_url=server.url, verify=ctx, timeout=30) as c:
            r = c.get("/v1/nodes/self")
            return r.status_code, r.json()["detail"]

    code, detail = daemon.lab.in_a.submit(with_old_cert).result()
    assert code == 401 and "replaced" in detail
    # the agent goes on with its new certificate
    events_before = node()["events"]
    assert _wait(lambda: node()["events"] > events_before)
    _rc, status, _e = daemon.cli("status")
    assert status["controller"]["error"] is None, status["controller"]
    ledger = server.ctl("ledger", "show")
    assert "certificate_rotated" in ledger.stdout, ledger.stderr


def test_an_order_runs_when_it_is_made_not_at_the_next_round(daemon: Daemon,  # noqa: F811
                                                              server: Server) -> None:
    """Rounds a minute apart: a grant made after the agent's first round opens the edge
    within seconds, through the agent's long poll for orders (without it: at the next
    round, a minute later)."""
    node_id, _token = _connect(daemon, server, interval=60)

    def status() -> dict:
        return daemon.cli("status")[1]["controller"] or {}

    assert _wait(lambda: status().get("error") is None and "orders" in status())
    daemon.lab.listen("b", "192.0.2.2", 8080)
    assert not daemon.lab.reachable(8080)
    assert _grant_from_a(daemon, server, node_id) == 201
    assert _wait(lambda: daemon.lab.reachable(8080), timeout=30), \
        daemon.log[-1].read_text()[-4000:]
    orders = [json.loads(line) for line in server.ctl("orders").stdout.splitlines()]
    assert [(o["kind"], o["status"]) for o in orders] == [("grant", "done")]


def test_ten_thousand_events_once_across_kill_9_of_agent_and_controller(
        daemon: Daemon, server: Server) -> None:  # noqa: F811
    """10,000 exec events, each of its own name (a hard link per burst index), go from the
    kernel through the agent's spool to the controller while the agent and then the
    controller are killed with SIGKILL in the middle of the burst; afterwards the
    controller holds each exec exactly once: 10,000 distinct event ids for 10,000
    distinct names, every index present (a loss plus a duplicate cannot hide). The one
    allowance is what the kernel itself counts as lost (its ring full, before the agent
    could see the exec): reported by the agent, and never more than that count."""
    node_id, _token = _connect(daemon, server, interval=0.2)
    marker = daemon.root / "burst"
    marker.mkdir()
    shutil.copy("/bin/true", marker / "m")
    for i in range(10_000):  # one inode, 10,000 names: the kernel reports the name run
        os.link(marker / "m", marker / f"m-{i}")
    query = sa.text("SELECT event_id, data FROM events WHERE node_id = :n AND kind = 'exec' "
                    "AND data LIKE :p")

    def stored() -> list[tuple[str, str]]:
        """(event id, exec'd name) of each stored exec of a burst link."""
        with server.engine().connect() as conn:
            rows = conn.execute(query, {"n": node_id, "p": f'%"{marker}/m-%'}).all()
        return [(r.event_id, json.loads(r.data)["filename"]) for r in rows]

    def burst(first: int, n: int) -> subprocess.Popen:
        return subprocess.Popen(["sh", "-c", f"i={first}; while [ $i -lt {first + n} ]; do "
                                             f'"{marker}/m-$i"; i=$((i+1)); done'])

    assert _wait(lambda: daemon.cli("status")[1]["controller"].get("error") is None
                 and daemon.cli("status")[1]["controller"].get("forwarded") is not None)
    for step in range(20):
        gen = burst(step * 500, 500)
        time.sleep(0.1)
        if step == 6:  # the agent dies mid-burst: spool and ring hold unforwarded events
            daemon.stop(signal.SIGKILL)
            daemon.start()
        if step == 12:  # the controller dies mid-intake, comes back on the same port
            server.kill()
            gen.wait()
            server.start()
        assert gen.wait(timeout=120) == 0
    def kernel_lost() -> int:
        """Execs the kernel could not hand over at all (its ring full): counted by the
        monitor, reported by the agent (heartbeat, metrics), never between ring and
        controller."""
        return int(daemon.cli("status")[1]["exec_monitor"]["lost"])

    if not _wait(lambda: (n := len(stored())) >= 10_000 or n + kernel_lost() >= 10_000,
                 timeout=180):
        names = {n for _i, n in stored()}
        missing = sorted(i for i in range(10_000) if f"{marker}/m-{i}" not in names)
        raise AssertionError(f"{len(names)} of 10,000 execs stored; missing indexes "
                             f"{missing[:20]}; agent: {daemon.cli('status')[1]}")
    time.sleep(2)  # a few more forwarding rounds: resends must not add anything
    rows = stored()
    ids, names = [i for i, _n in rows], [n for _i, n in rows]
    missing = {f"{marker}/m-{i}" for i in range(10_000)} - set(names)
    twice = sorted(n for n, count in Counter(names).items() if count > 1)
    lost = kernel_lost()
    # every exec the kernel handed over is stored: only as many may be missing as the
    # kernel itself counted as lost. Under load about one run in ten here (and one CI run)
    # had the exec program's ring reservation fail once (a single record, so not a full
    # ring: the agent kept up); a ring the agent let fill up would lose hundreds.
    assert lost <= 10, f"the kernel lost {lost} execs: the agent fell behind its ring"
    assert len(missing) <= lost, (f"{len(missing)} execs never stored (kernel lost {lost}), "
                                  f"e.g. {sorted(missing)[:5]}; {daemon.cli('status')[1]}")
    assert not twice, f"{len(twice)} execs stored more than once, e.g. {twice[:5]}"
    assert len(rows) == len(set(ids)) == len(set(names)) == 10_000 - len(missing)
    if lost:
        warnings.warn(f"the exec monitor's ring was full: the kernel lost {lost} execs, "
                      f"{len(missing)} of them from the burst", stacklevel=1)


def test_agent_unwraps_its_bootstrap_token_once_and_reports_a_stolen_one(
        daemon: Daemon, server: Server) -> None:  # noqa: F811
    """OpenBao in namespace a wraps the bootstrap token; the agent in b unwraps it. A
    wrapping token someone else opened first is refused (and reported once the node is
    enrolled); a fresh one enrolls the node and is gone from it."""
    node_id = f"{daemon.prefix}-node"
    with openbao_dev(daemon.prefix + "v", netns=daemon.lab.pair.a,
                     host=daemon.lab.pair.a_addr) as bao:
        env = bao.env

        def wrapped() -> str:
            out = server.ctl("token", "issue", node_id, env=env, in_netns=True)
            assert out.returncode == 0 and "response-wrapped" in out.stderr, out.stderr
            return out.stdout.strip()

        stolen = wrapped()
        thief = subprocess.run(["nsenter", f"--net=/run/netns/{daemon.lab.pair.a}",
                                str(BAO), "unwrap", "-format=json"], capture_output=True,
                               text=True, timeout=60, check=False,
                               env={**os.environ, **bao.env, "BAO_TOKEN": stolen})
        assert thief.returncode == 0, thief.stderr
        assert json.loads(thief.stdout)["data"]["node_id"] == node_id
        _node, token_file = _connect(daemon, server, interval=0.5, token=stolen,
                                     vault={"url": bao.addr, "ca_file": bao.ca_file})

        def link_error() -> str:
            return str(daemon.cli("status")[1]["controller"].get("error") or "")

        def unwrap_failures() -> list[dict]:
            return [e for e in daemon.events() if e.get("kind") == "agent"
                    and e.get("data", {}).get("what") == "bootstrap_unwrap_failed"]

        # the refusal is read from the spool, where it stays: the link's error in status
        # is overwritten by the next attempt ("no bootstrap token") within half a second
        assert _wait(unwrap_failures), link_error()
        (failure,) = unwrap_failures()
        assert "already unwrapped or it expired" in str(failure["data"]["error"]), failure
        assert not token_file.exists()  # spent: not kept
        assert stolen not in json.dumps(failure) and stolen not in link_error()
        token_file.write_text(wrapped())
        assert _wait(lambda: json.loads(server.ctl("node", "show", node_id).stdout or "{}")
                     .get("state") == "enrolled", timeout=90), link_error()
        assert not token_file.exists()
    # the failed unwrap was spooled and reaches the controller once the node is enrolled
    assert _wait(lambda: _stored(server, node_id, "bootstrap_unwrap_failed") == 1)


def _stored(server: Server, node_id: str, what: str, source: str | None = None) -> int:
    """How many of the node's agent events named ``what`` (from ``source``: cli, order or
    policy, when given) the controller holds."""
    with server.engine().connect() as conn:
        return int(conn.execute(sa.text(
            "SELECT count(*) FROM events WHERE node_id = :n AND kind = 'agent' "
            "AND data LIKE :p AND data LIKE :s"),
            {"n": node_id, "p": f'%"what": "{what}"%',
             "s": f'%"source": "{source}"%' if source else "%"}).scalar_one())


def test_attested_bpf_programs_pinned_into_the_profile_and_a_removed_one_is_caught(
        daemon: Daemon, server: Server) -> None:  # noqa: F811
    """The report names each pinned program by its kernel tag and each component's attach
    mode; `profile set --pin-bpf` expects them; a program pin removed on the node makes
    the node suspect at its next attestation, with the program named."""
    node_id, _token = _connect(daemon, server, interval=0.5)

    def node() -> dict:
        return json.loads(server.ctl("node", "show", node_id).stdout or "{}")

    assert _wait(lambda: node().get("measurement") is not None), node()
    bpf = json.loads(node()["measurement"])["bpf"]
    progs = {e["pin"]: e for e in bpf if e.get("kind") == "prog"}
    modes = {e["component"]: e["mode"] for e in bpf if "component" in e}
    assert modes["segment"] in ("xdp/native tcx", "xdp/generic tcx",
                                "xdp/native clsact", "xdp/generic clsact"), modes
    assert modes["exec"] in ("lsm", "sigkill") and modes["connect"] == "cgroup", modes
    assert any(p.startswith("segment/") for p in progs), progs
    exec_prog = next(p for p in progs if p.startswith("exec/"))
    assert len(progs[exec_prog]["tag"]) == 16 and progs[exec_prog]["name"], progs[exec_prog]

    empty = daemon.root / "profile.json"
    empty.write_text("{}")
    pinned = server.ctl("profile", "set", node_id, str(empty), "--pin-bpf")
    assert pinned.returncode == 0, pinned.stderr
    expected = json.loads(pinned.stdout)["bpf"]
    assert expected[f"prog:{exec_prog}"] == progs[exec_prog]["tag"]
    assert expected["mode:exec"] == modes["exec"]
    assert _wait(lambda: node().get("state") == "trusted"), node()

    (Path(f"/sys/fs/bpf/{daemon.prefix}-mon") / exec_prog).unlink()  # tampering on the node
    assert server.ctl("order", "create", node_id, "attest").returncode == 0
    assert _wait(lambda: node().get("state") == "suspect"), node()
    assert f"bpf prog:{exec_prog}: expected {progs[exec_prog]['tag']}, got not loaded" \
        in node()["reason"], node()["reason"]


def test_pin_bpf_before_any_attestation_says_what_to_do(server: Server) -> None:
    server.token("fresh")  # the node exists, never enrolled
    empty = server.state / "profile.json"
    empty.write_text("{}")
    out = server.ctl("profile", "set", "fresh", str(empty), "--pin-bpf")
    assert out.returncode == 2 and "has not attested yet" in out.stderr, out.stderr
