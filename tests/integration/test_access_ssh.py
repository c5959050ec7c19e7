"""Admins without permanent SSH keys, with the real things: the real OpenBao's SSH secrets
engine as the user CA and its identity tokens as the users' JWTs, a real
`aegis-controller serve`, a node that enrolled and attested, the agent's order executor
with its real KRL writer, and a real sshd (OpenSSH of the node image) in a test network
namespace configured as aegis.fleet.harden does (TrustedUserCAKeys, a principals file,
AuthorizedKeysFile none, RevokedKeys = the agent's KRL), logged in to with the host's ssh.

An ssh grant needs two different approvers; once granted it carries a certificate for the
user's public key and principal, valid until the grant's end, that logs in; an early
revoke (or an idle drop) sends the node a signed revoke-ssh-cert order, after which sshd
refuses the same, still valid certificate; a certificate past its window is refused.
The network edge of the grant is test_access_datapath's (XDP): here the grant and revoke
orders are only checked for their content.

The commands of a session reach the ledger the agent's way: the real exec monitor (BPF)
names each exec's sshd session process, the agent's SshSessions joins it with sshd's log
(through a syslog stand-in, see harness_sshd) and marks the grant, and the node posts the
events to the controller's intake, which records them under the grant."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import hvac
import pytest
from harness_idp import Idp, make_idp
from harness_sshd import Sshd, keygen, sshd_in_netns

from aegis_agent.bpf.monitors import ExecMonitor
from aegis_agent.bpf.syscall import map_info
from aegis_agent.config import SshKrlConfig
from aegis_agent.events import ExecDecoder, RingIds, wall_offset_ns
from aegis_agent.measure import collect
from aegis_agent.orders import FileReplayGuard, OrderExecutor
from aegis_agent.revoked_keys import RevokedKeys
from aegis_agent.ssh_sessions import SshSessions
from aegis_protocol import routes
from aegis_protocol.access import SESSION_GRANT
from aegis_protocol.attestation import ExpectedProfile
from aegis_protocol.events import MAX_BATCH, Event, EventBatch, agent_event
from aegis_protocol.signing import load_public_key
from conftest import sub_prefix
from harness import OpenBao, netns_pair
from harness_controller import Node, Server, attest, enroll, new_node, node_tree, operator_client

pytestmark = pytest.mark.integration

NODE = "db1"
USERS = {"adam": ["admins"], "sam": ["security"], "dora": ["dba"], "dana": ["dev"]}
SSH_ROLE = "aegis-access"


def policy_text(idp: Idp) -> str:
    g = idp.group
    roles = {"admin": [g("admins")], "security": [g("security")], "dba": [g("dba")],
             "developer": [g("dev")]}
    return json.dumps({
        "roles": roles,
        "services": {"db-ssh": {"nodes": {"role": "db"}, "port": "tcp/22", "kind": "ssh"},
                     "db": {"nodes": {"role": "db"}, "port": "tcp/5432"}},
        "rules": [{"name": "admin-ssh", "service": "db-ssh", "roles": ["admin"],
                   "max_ttl": "30m", "approvers": ["security", "dba"], "approvals": 2},
                  {"name": "developers-db", "service": "db", "roles": ["developer"]}]})


@dataclass
class SshCa:
    mount: str
    public_key: str
    token_file: Path


def make_ssh_ca(bao: OpenBao, tag: str, tmp: Path) -> SshCa:
    """The SSH secrets engine at ``<tag>-ssh`` with a CA key of its own, the role the
    controller signs with, and a token that may only update its sign path."""
    root = hvac.Client(url=bao.addr, token=bao.token)
    mount = f"{tag}-ssh"
    root.sys.enable_secrets_engine("ssh", path=mount)
    public = root.write(f"{mount}/config/ca", generate_signing_key=True,
                        key_type="ed25519")["data"]["public_key"]
    root.write(f"{mount}/roles/{SSH_ROLE}", key_type="ca", allow_user_certificates=True,
               allow_user_key_ids=True, allowed_users="*", max_ttl="24h", ttl="10m",
               allowed_extensions="permit-pty,permit-port-forwarding", default_extensions={})
    root.sys.create_or_update_policy(
        mount, f'path "{mount}/sign/{SSH_ROLE}" {{ capabilities = ["update"] }}')
    token = root.auth.token.create(policies=[mount], ttl="2h",
                                   no_default_policy=True)["auth"]["client_token"]
    token_file = tmp / "ssh-ca.token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    return SshCa(mount, public, token_file)


@dataclass
class Lab:
    server: Server
    idp: Idp
    node: Node
    sshd: Sshd
    krl: RevokedKeys
    tmp: Path

    def call(self, user: str, method: str, path: str, body: dict | None = None
             ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.idp.token(user)}"}
        with httpx.Client(base_url=self.server.url, verify=self.server.ca, timeout=30) as c:
            return c.request(method, path, json=body, headers=headers)

    def request(self, user: str, service: str, ttl: str | int, **kw: object
                ) -> httpx.Response:
        return self.call(user, "POST", routes.ACCESS,
                         {"service": service, "ttl": ttl, "reason": "change 11", **kw})

    def granted(self, user: str, key: Path, ttl: str | int) -> dict:
        """An ssh request of ``user`` approved by sam and dora: the granted state."""
        r = self.request(user, "db-ssh", ttl, ssh_public_key=key.read_text())
        assert r.status_code == 201 and r.json()["status"] == "pending", r.text
        rid = r.json()["request_id"]
        for approver in ("sam", "dora"):
            r = self.call(approver, "POST", routes.access_one(rid, "approve"), {})
            assert r.status_code == 200, r.text
        assert r.json()["status"] == "granted", r.text
        return r.json()

    def logged_in(self, name: str, ttl: str | int) -> tuple[dict, Path, Path]:
        """adam's approved ssh grant for a fresh key ``name``, its certificate saved, the
        grant order run, and a login with it: (granted state, key, certificate)."""
        key, cert = self.tmp / name, self.tmp / f"{name}-cert.pub"
        granted = self.granted("adam", keygen(key), ttl)
        cert.write_text(granted["ssh"]["certificate"] + "\n")
        assert [k for k, _, _ in self.run_orders()] == ["grant"]
        login = self.sshd.login(key, cert)
        assert login.returncode == 0, login.stderr + self.sshd.log()
        return granted, key, cert

    def refused(self, key: Path, cert: Path) -> None:
        out = self.sshd.login(key, cert)
        assert out.returncode == 255 and "Permission denied" in out.stderr, out

    def run_orders(self) -> list[tuple[str, dict, str]]:
        """The agent's order executor on the node's pending orders (real verification);
        revoke-ssh-cert runs the agent's real KRL writer on the KRL sshd reads, grant and
        revoke (and attest) are recorded only. Returns (kind, args, ack detail) of each but
        attest."""
        done: list[tuple[str, dict]] = []

        def record(kind: str):
            return lambda args: done.append((kind, args)) or "ok"

        def revoke_cert(args: dict) -> str:
            done.append(("revoke-ssh-cert", args))
            return self.krl.revoke(args)

        ex = OrderExecutor(NODE, load_public_key(self.node.order_key),  # type: ignore[attr-defined]
                           self.node.identity,  # type: ignore[attr-defined]
                           FileReplayGuard(self.tmp / "nonces.json"),
                           {"grant": record("grant"), "revoke": record("revoke"),
                            "attest": record("attest"), "revoke-ssh-cert": revoke_cert})
        acks = []
        with self.node.client(self.server) as c:
            for signed in c.get(routes.ORDERS).json():
                ack = ex.execute(signed)
                assert ack.ack.status == "done", ack.ack.detail
                acks.append(ack.ack.detail)
                r = c.post(routes.order_ack(signed["order"]["id"]),
                           json=ack.model_dump(mode="json"))
                assert r.status_code == 200, r.text
        return [(k, a, d) for (k, a), d in zip(done, acks, strict=True) if k != "attest"]

    def post_events(self, events: list[Event]) -> None:
        """``events`` sent to the controller as the node's agent sends them."""
        with self.node.client(self.server) as c:
            for i in range(0, len(events), MAX_BATCH):
                batch = EventBatch(node_id=NODE, events=events[i:i + MAX_BATCH])
                r = c.post(routes.EVENTS, json=batch.model_dump(mode="json"))
                assert r.status_code == 200, r.text

    def access_events(self, request_id: str) -> list[dict]:
        out = self.server.ctl("ledger", "show")
        assert out.returncode == 0, out.stderr
        return [r["body"] for r in map(json.loads, out.stdout.splitlines())
                if r["kind"] == "access_grant" and r["subject"] == f"access:{request_id}"]


@pytest.fixture(scope="module")
def idp(openbao: OpenBao) -> Idp:
    return make_idp(openbao, sub_prefix(), USERS)


@pytest.fixture(scope="module")
def ssh_ca(openbao: OpenBao, idp: Idp, tmp_path_factory: pytest.TempPathFactory) -> SshCa:
    return make_ssh_ca(openbao, idp.tag, tmp_path_factory.mktemp("ssh-ca"))


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def lab(request: pytest.FixtureRequest, openbao: OpenBao, idp: Idp, ssh_ca: SshCa,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """The controller on SQLite, then on a fresh database of the run's PostgreSQL."""
    tmp = tmp_path_factory.mktemp("access-ssh")
    prefix = sub_prefix()
    ca = ssh_ca
    state = Path(tempfile.mkdtemp(prefix=f"{prefix}-ssh-ctl-"))
    srv = Server(state, None)
    try:
        with contextlib.ExitStack() as stack:
            if request.param == "postgresql":
                srv.db = stack.enter_context(request.getfixturevalue("pg_server").database())
            stack.callback(lambda: srv.proc is not None and srv.kill())  # before the drop
            pair = stack.enter_context(netns_pair(f"{prefix}s"))
            sshd = stack.enter_context(sshd_in_netns(
                pair, tmp / "srv", f"{prefix}-sshd", ca.public_key,
                {"root": [f"{idp.tag}-adam"]}))
            assert srv.ctl("keys", "init").returncode == 0
            srv.start("--oidc-issuer", idp.issuer, "--oidc-audience", idp.audience,
                      "--oidc-leeway", "0", "--vault-addr", openbao.addr,
                      "--ssh-ca-mount", ca.mount, "--ssh-ca-role", SSH_ROLE,
                      "--ssh-ca-token-file", str(ca.token_file))
            node = new_node(srv, NODE)
            assert enroll(srv, node, srv.token(NODE)).status_code == 200
            root = node_tree(tmp / "root")
            with operator_client(srv) as op:
                r = op.put(routes.node_profile(NODE), json=ExpectedProfile(
                    golden=collect(root=root, sshd=False).golden).model_dump(mode="json"))
            assert r.status_code == 204, r.text
            assert attest(srv, node, root)["state"] == "trusted"
            out = srv.ctl("node", "labels", NODE, "role=db", "--address", pair.b_addr)
            assert out.returncode == 0, out.stderr
            (tmp / "policy.yml").write_text(policy_text(idp))
            out = srv.ctl("access", "policy", "set", str(tmp / "policy.yml"))
            assert out.returncode == 0, out.stderr
            krl = RevokedKeys(SshKrlConfig(file=sshd.krl, ca_public_key=sshd.ca_public_key,
                                           spec_file=tmp / "agent" / "revoked_keys.spec"))
            yield Lab(srv, idp, node, sshd, krl, tmp)
    finally:
        if srv.proc is not None:
            srv.kill()
        shutil.rmtree(state, ignore_errors=True)


def test_approved_certificate_logs_in_and_an_early_revoke_makes_sshd_refuse_it(
        lab: Lab) -> None:
    key = lab.tmp / "adam-key"
    public = keygen(key)
    cert = lab.tmp / "adam-key-cert.pub"
    # one approval is not enough: no certificate yet, nothing for the node
    r = lab.request("adam", "db-ssh", "20m", ssh_public_key=public.read_text())
    assert r.status_code == 201, r.text
    rid = r.json()["request_id"]
    r = lab.call("sam", "POST", routes.access_one(rid, "approve"), {})
    assert r.json()["status"] == "pending" and r.json()["ssh"] is None, r.text
    # the second, different approver grants it: the state carries the certificate
    r = lab.call("dora", "POST", routes.access_one(rid, "approve"), {})
    granted = r.json()
    assert granted["status"] == "granted", r.text
    ssh = granted["ssh"]
    principal = f"{lab.idp.tag}-adam"
    assert ssh["principal"] == principal
    assert ssh["key_id"] == f"{principal}@aegis-access/{rid}"
    # valid until the grant ends (the CA's clock and the controller's may straddle a second)
    assert granted["expires_at"] == granted["granted_at"] + 1200
    assert abs(ssh["valid_before"] - granted["expires_at"]) <= 2, ssh
    # the requester fetches it with the CLI and saves it next to the key
    token_file = lab.tmp / "adam.jwt"
    token_file.write_text(lab.idp.token("adam"))
    out = lab.server.ctl("access", "show", rid, "--ssh-cert-out", str(cert), "--url",
                         lab.server.url, "--ca", str(lab.server.state / "ca" / "ca.pem"),
                         "--token-file", str(token_file))
    assert out.returncode == 0, out.stderr
    assert cert.read_text().strip() == ssh["certificate"].strip()
    # it logs in (sshd checks it against the CA from OpenBao, the principals file, the KRL)
    login = lab.sshd.login(key, cert)
    assert login.returncode == 0, login.stderr + lab.sshd.log()
    assert login.stdout.strip() == "hello-42"
    assert f'ID {ssh["key_id"]} (serial {ssh["serial"]})' in lab.sshd.log()
    # the key alone (no certificate, no authorized_keys) does not
    alone = lab.tmp / "adam-key-alone"  # no -cert.pub beside it for ssh to pick up
    shutil.copy2(key, alone)
    lab.refused(alone, lab.tmp / "missing-cert.pub")
    assert lab.run_orders() == [("grant", {"edge": f"127.0.0.1 -> {lab.sshd.pair.b_addr} "
                                          "tcp/22", "ttl": 1200, "idle": 60}, "ok")]
    # an early revoke: the edge's revoke order and the certificate's KRL order
    r = lab.call("adam", "POST", routes.access_one(rid, "revoke"), {"reason": "done"})
    assert r.status_code == 200 and r.json()["status"] == "revoked", r.text
    done = lab.run_orders()
    assert [(k, a.get("serial"), a.get("key_id")) for k, a, _ in done] == [
        ("revoke", None, None), ("revoke-ssh-cert", ssh["serial"], ssh["key_id"])]
    assert "in " + str(lab.sshd.krl) in done[1][2]
    # sshd refuses the same certificate, though it is valid for another 19 minutes
    assert ssh["valid_before"] > time.time() + 600
    lab.refused(key, cert)
    assert "revoked by file" in lab.sshd.log()
    # on the ledger: the certificate with the grant, the KRL order with the revoke
    events = lab.access_events(rid)
    assert [e["event"] for e in events] == ["request", "approval", "approval", "grant",
                                            "revoke"]
    assert events[3]["ssh_certificate"]["serial"] == ssh["serial"]
    assert events[3]["ssh_certificate"]["key_id"] == ssh["key_id"]
    assert events[4]["krl_orders"] == [r.json()["edges"][0]["krl_order"]]
    assert lab.server.ctl("ledger", "verify").returncode == 0


def test_certificate_outside_its_window_is_refused_and_an_idle_drop_revokes_it(
        lab: Lab) -> None:
    short, key, cert = lab.logged_in("adam-short", 15)
    # past the window: refused (the grant's end is the certificate's)
    while time.time() <= short["ssh"]["valid_before"] + 1:
        time.sleep(0.5)
    lab.refused(key, cert)
    assert short["ssh"]["serial"] not in lab.krl.listed()  # expiry needs no KRL entry
    # an idle drop (the agent's edges_expired event) ends a grant early: KRL order
    idle, key2, cert2 = lab.logged_in("adam-idle", "15m")
    batch = EventBatch(node_id=NODE, events=[
        agent_event("edges_expired", edges=idle["edges"][0]["edge"])])
    with lab.node.client(lab.server) as c:
        r = c.post(routes.EVENTS, json=batch.model_dump(mode="json"))
    assert r.status_code == 200, r.text
    state = lab.call("adam", "GET", routes.access_one(idle["request_id"])).json()
    assert state["status"] == "revoked" and state["edges"][0]["status"] == "idle"
    done = lab.run_orders()
    assert [(k, a["serial"]) for k, a, _ in done] == [
        ("revoke-ssh-cert", idle["ssh"]["serial"])]
    lab.refused(key2, cert2)
    assert lab.krl.listed() >= {idle["ssh"]["serial"]}


def test_ssh_request_bad_input_is_refused_naming_the_field(lab: Lab) -> None:
    public = keygen(lab.tmp / "dana-key").read_text()
    before = {x["request_id"] for x in lab.call("sam", "GET", routes.ACCESS).json()}
    cases = [
        ("adam", "db-ssh", {}, 400, "ssh_public_key: service 'db-ssh' is of kind ssh"),
        ("adam", "db-ssh", {"ssh_public_key": "ssh-ed25519 AAAAnotakey"}, 400,
         "ssh_public_key: not an OpenSSH public key"),
        ("adam", "db-ssh", {"ssh_public_key": public + public}, 400,
         "ssh_public_key: one public key line"),
        ("dana", "db", {"ssh_public_key": public}, 400, "is not of kind ssh"),
        ("adam", "db-ssh", {"ssh_public_key": public, "ttl": "31m"}, 400,
         "over the maximum of rule 'admin-ssh'"),
    ]
    for user, service, extra, status, detail in cases:
        ttl = extra.pop("ttl", "10m")
        r = lab.request(user, service, ttl, **extra)
        assert r.status_code == status and detail in r.json()["detail"], (service, r.text)
    assert {x["request_id"] for x in lab.call("sam", "GET", routes.ACCESS).json()} == before


def test_an_operator_revokes_a_certificate_by_hand(lab: Lab) -> None:
    """`aegis-controller order create NODE revoke-ssh-cert --arg serial=N --arg key_id=K`:
    the serial stays text (the command line turned digits into a number, which the order's
    model refuses)."""
    granted, key, cert = lab.logged_in("adam-manual", "15m")
    ssh = granted["ssh"]
    out = lab.server.ctl("order", "create", NODE, "revoke-ssh-cert", "--arg",
                         f"serial={ssh['serial']}", "--arg", f"key_id={ssh['key_id']}",
                         "--arg", "reason=INC-7 key lost")
    assert out.returncode == 0, out.stderr
    assert [(k, a["serial"]) for k, a, _ in lab.run_orders()] == [
        ("revoke-ssh-cert", ssh["serial"])]
    lab.refused(key, cert)
    # the grant itself ends too: its KRL order finds the certificate listed already
    r = lab.call("adam", "POST", routes.access_one(granted["request_id"], "revoke"), {})
    assert r.status_code == 200, r.text
    done = lab.run_orders()
    assert [k for k, _, _ in done] == ["revoke", "revoke-ssh-cert"]
    assert done[1][2] == f"certificate serial {ssh['serial']} already in {lab.sshd.krl}"


class Drain:
    """The daemon's exec path on the real exec monitor, from a thread that starts at once
    (the ring is the host's: a busy host must not fill it while the test runs): ring
    batches through the exec decoder and the session marks, released once kept."""

    def __init__(self, mon: ExecMonitor, sessions: SshSessions) -> None:
        self.ring = mon.batch()
        self.to_events = sessions.marking(ExecDecoder(
            wall_offset_ns(), RingIds(map_info(self.ring.fileno()).id)).events)
        self.events: list[Event] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            records = self.ring.pending()
            if records:
                events = self.to_events(records)
                self.ring.release()
                with self._lock:
                    self.events += events
            else:
                self._stop.wait(0.05)

    def until(self, done: Callable[[list[Event]], bool], timeout: float = 10) -> list[Event]:
        """Every event drained once ``done`` holds for them (or ``timeout`` passed) and one
        more round found the ring empty; the thread is stopped."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if done(self.events):
                    break
            time.sleep(0.1)
        time.sleep(0.3)
        self.stop()
        return self.events

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


@pytest.fixture
def drain(lab: Lab) -> Iterator[Drain]:
    """The real exec monitor (its own pins) drained the daemon's way from now on."""
    mon = ExecMonitor(f"/sys/fs/bpf/{sub_prefix()}-exec")
    try:
        mon.start()
        d = Drain(mon, SshSessions(lab.sshd.syslog.path))
        try:
            yield d
        finally:
            d.stop()
    finally:
        mon.stop()


def test_the_commands_of_a_session_go_on_the_ledger_under_its_grant(
        lab: Lab, drain: Drain) -> None:
    """id, a pipeline, a subshell and a child shell run in adam's session are recorded
    under its grant with adam's identity; a second session open at the same time (another
    certificate, another grant) and a command run on the node outside any session are
    not."""
    first, key, cert = lab.logged_in("adam-cmds", "15m")
    other_key, other_cert = lab.tmp / "adam-other", lab.tmp / "adam-other-cert.pub"
    other = lab.granted("adam", keygen(other_key), "15m")
    other_cert.write_text(other["ssh"]["certificate"] + "\n")
    assert [k for k, _, _ in lab.run_orders()] == ["grant"]
    # the other session stays open while adam's runs, and runs commands of its own
    second = subprocess.Popen(lab.sshd.ssh_argv(other_key, other_cert, "root",
                                                "sleep 2; basename other-session"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # a pipeline, a child shell, a subshell, a new session (setsid) and a process
        # renamed sshd (the walk must not stop at a look-alike of the session's sshd)
        out = lab.sshd.login(key, cert, command="id; ls /tmp | wc -l; sh -c 'echo hi'; "
                             "(cat /dev/null; tail -n0 /dev/null); setsid -w uname -s; "
                             "cp /bin/sh /tmp/sshd && /tmp/sshd -c '/tmp/sshd -c \"id -u\"'; "
                             "env DB_PASSWORD=s3cr3t-in-argv true")
        assert out.returncode == 0, out.stderr + lab.sshd.log()
        assert "uid=0(root)" in out.stdout and "hi\nLinux\n0\n" in out.stdout, out.stdout
        outside = subprocess.Popen(["basename", "outside-session"], stdout=subprocess.PIPE,
                                   text=True)
        assert outside.communicate(timeout=30)[0] == "outside-session\n"
        b_out, b_err = second.communicate(timeout=30)
        assert second.returncode == 0 and b_out == "other-session\n", b_err
    finally:
        if second.poll() is None:
            second.kill()
            second.wait()
    # the agent's side: what it drained and marked, all sent to the controller
    events = drain.until(lambda seen: {"tail", "basename"} <= {
        str(e.data.get("filename")).rsplit("/", 1)[-1] for e in seen})
    lab.post_events(events)
    # the agent saw the exec outside every session, and marked it with no grant
    (outside_ev,) = [e for e in events if e.data["pid"] == outside.pid]
    assert outside_ev.data["comm"] == "basename" and SESSION_GRANT not in outside_ev.data
    # ... and the ledger has adam's commands under his grant, with his identity
    steps = [e for e in lab.access_events(first["request_id"])
             if e["event"] == "session_command"]
    ran = [s["filename"].rsplit("/", 1)[-1] for s in steps]
    for command in ("id", "ls", "wc", "sh", "cat", "tail", "uname"):
        assert command in ran, (command, ran)
    assert "basename" not in ran and "sleep" not in ran, ran
    # with their arguments, as the kernel saw them
    args = {s["args"] for s in steps}
    for line in ("ls /tmp", "wc -l", "sh -c echo hi", "cat /dev/null", "tail -n0 /dev/null",
                 "setsid -w uname -s", "uname -s", "id -u"):
        assert line in args, (line, args)
    # a secret typed on the command line is masked before the event is made: not in the
    # agent's events (its spool), not on the ledger
    assert "env DB_PASSWORD=***** true" in args, args
    assert not [e for e in events if "s3cr3t-in-argv" in str(e.data)]
    assert "s3cr3t-in-argv" not in lab.server.ctl("ledger", "show").stdout
    principal = f"{lab.idp.tag}-adam"
    assert all(s["user"]["name"] == principal and s["node"] == NODE for s in steps), steps
    assert {s["ssh_serial"] for s in steps} == {first["ssh"]["serial"]}
    assert all(s["uid"] == 0 and s["at_ns"] > 0 for s in steps)
    # the other session's commands are under the other grant, not adam's first
    theirs = [s["filename"].rsplit("/", 1)[-1] for s in lab.access_events(
        other["request_id"]) if s["event"] == "session_command"]
    assert "basename" in theirs and "sleep" in theirs and "id" not in theirs, theirs
    assert lab.server.ctl("ledger", "verify").returncode == 0
    for granted in (first, other):  # leave no grant open for the tests after
        r = lab.call("adam", "POST", routes.access_one(granted["request_id"], "revoke"), {})
        assert r.status_code == 200, r.text
    lab.run_orders()


def test_node_leaving_trusted_puts_its_certificates_on_the_krl(lab: Lab) -> None:
    """Last in the module: the node ends suspect."""
    granted, key, cert = lab.logged_in("adam-trust", "15m")
    # the node fails attestation: suspect; its edges are revoked with the certificate
    with operator_client(lab.server) as op:
        r = op.put(routes.node_profile(NODE), json=ExpectedProfile(
            golden={"/etc/aegis.conf": "0" * 64}).model_dump(mode="json"))
    assert r.status_code == 204, r.text
    assert attest(lab.server, lab.node, lab.tmp / "root")["state"] == "suspect"
    state = lab.call("adam", "GET", routes.access_one(granted["request_id"])).json()
    assert state["status"] == "revoked" and "left trusted" in state["end_reason"]
    done = lab.run_orders()
    assert [(k, a.get("serial")) for k, a, _ in done] == [
        ("revoke", None), ("revoke-ssh-cert", granted["ssh"]["serial"])]
    lab.refused(key, cert)
    events = lab.access_events(granted["request_id"])
    assert events[-1]["event"] == "revoke" and len(events[-1]["krl_orders"]) == 1

