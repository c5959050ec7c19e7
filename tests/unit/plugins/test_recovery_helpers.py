"""Pure helpers of the recovery modules and playbooks: the age recipient check, the golden
diff, management peers as the agent prints them, the freeze allow-list, the quarantine's
plan, the in-memory tar, and the agent's control-socket client against a real socket."""

from __future__ import annotations

import io
import json
import os
import re
import socket
import tarfile
import threading
from pathlib import Path

import pyrage
import pytest

from aegis_agent.bpf.edges import Peer
from ansible_collections.aegis.fleet.plugins.filter.recovery import age_recipient_problem
from ansible_collections.aegis.fleet.plugins.module_utils.freezer import Freezer
from ansible_collections.aegis.fleet.plugins.module_utils.recovery import (
    AgentError,
    agent_call,
    golden_diff,
    keep_unit,
    normal_peer,
    parse_show,
    process_list,
    recipient_problem,
    sha256_file,
)
from ansible_collections.aegis.fleet.plugins.modules.forensics_bundle import pack
from ansible_collections.aegis.fleet.plugins.modules.quarantine import KEEP_UNITS, plan, render

pytestmark = pytest.mark.unit


def _key() -> str:
    return str(pyrage.x25519.Identity.generate().to_public())


# -- age recipients -----------------------------------------------------------------------
def test_real_recipients_pass_in_either_case() -> None:
    for _ in range(20):
        key = _key()
        assert recipient_problem(key) is None
        assert recipient_problem(key.upper()) is None
        assert recipient_problem(f"  {key}\n") is None
        assert age_recipient_problem(key) == ""


@pytest.mark.parametrize(("value", "needle"), [
    (None, "no recipient given"),
    ("", "no recipient given"),
    ("   ", "no recipient given"),
    (42, "must be a string"),
    ("AGE-SECRET-KEY-1QQQ", "an age identity (a private key), not a recipient"),
    ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI", "SSH keys are not accepted"),
    ("age2qqqq", "starts with 'age1'"),
    ("age1qqqb", "are not bech32"),
    ("age1qqqq", "has 62 characters, this one has 8"),
])
def test_bad_recipients_say_what_is_wrong_and_how_to_make_one(value, needle) -> None:
    problem = recipient_problem(value)
    assert problem is not None and needle in problem, problem
    if "identity" not in needle:
        assert "age-keygen" in problem and "pyrage" in problem
    assert age_recipient_problem(value) == problem


def test_a_typo_fails_the_checksum_and_mixed_case_is_refused() -> None:
    key = _key()
    typo = key[:-1] + ("q" if key[-1] != "q" else "p")
    assert "checksum does not match" in recipient_problem(typo)
    mixed = key[:10] + key[10:].upper()
    assert "mixed upper and lower case" in recipient_problem(mixed)
    # what the check passes, pyrage accepts; what pyrage refuses, the check refuses first
    pyrage.x25519.Recipient.from_str(key)
    with pytest.raises(Exception):  # noqa: B017 - pyrage's own error type
        pyrage.x25519.Recipient.from_str(typo)


# -- golden record --------------------------------------------------------------------------
def test_golden_diff_names_changed_missing_and_appeared_files(tmp_path: Path) -> None:
    same, changed, gone = tmp_path / "same", tmp_path / "changed", tmp_path / "gone"
    new = tmp_path / "new"
    for path in (same, changed, new):
        path.write_text(path.name)
    record = {"schema": "aegis.golden/v1", "files": {
        str(same): sha256_file(str(same)), str(changed): "0" * 64, str(gone): "1" * 64,
        str(new): None}, "sysctl": {"kernel.kptr_restrict": "2"}}
    diff = golden_diff(record)
    assert [(d["path"], d["status"]) for d in diff] == [
        (str(changed), "changed"), (str(gone), "missing"), (str(new), "appeared")]
    assert diff[0] == {"path": str(changed), "expected": "0" * 64,
                       "actual": sha256_file(str(changed)), "status": "changed"}
    assert golden_diff({"files": {}}) == []
    for bad in ([], {"files": ["x"]}):
        with pytest.raises(ValueError, match="not a golden record"):
            golden_diff(bad)


def test_sha256_of_a_directory_or_missing_file_is_none(tmp_path: Path) -> None:
    assert sha256_file(str(tmp_path)) is None
    assert sha256_file(str(tmp_path / "none")) is None


# -- processes ------------------------------------------------------------------------------
def test_process_list_has_this_process_with_its_command_line() -> None:
    me = next(p for p in process_list() if p["pid"] == os.getpid())
    assert me["ppid"] == os.getppid()
    assert me["exe"] == os.readlink("/proc/self/exe")
    assert me["cmdline"] and me["uid"] == os.getuid() and me["user"]


# -- management peers, systemd --------------------------------------------------------------
@pytest.mark.parametrize("spec", ["10.0.0.1", "10.0.0.1/32 tcp/22", "10.0.0.0/24",
                                  "192.0.2.7 TCP/8443", "192.0.2.0/28 udp", "10.1.2.3 icmp"])
def test_peers_are_written_the_way_the_agent_prints_them(spec: str) -> None:
    assert normal_peer(spec) == str(Peer.parse(spec.lower()))


@pytest.mark.parametrize(("spec", "needle"), [
    ("", "write 'ADDRESS"), ("10.0.0.1 tcp/22 extra", "write 'ADDRESS"),
    ("host.example tcp/22", "not an IPv4 address"), ("10.0.0.1 sctp/1", "not PROTO[/PORT]"),
    ("10.0.0.1 tcp/ssh", "not PROTO[/PORT]"), ("10.0.0.1 tcp/0", "port 1-65535"),
    ("10.0.0.1 icmp/8", "icmp without one"),
])
def test_bad_peers_are_named(spec: str, needle: str) -> None:
    with pytest.raises(ValueError, match=re.escape(needle)):
        normal_peer(spec)


def test_parse_show_blocks_and_the_keep_list() -> None:
    text = ("Id=cron.service\nSlice=system.slice\nFreezerState=running\n\n"
            "Id=user@0.service\nSlice=user-0.slice\nFreezerState=frozen\n")
    assert parse_show(text) == [
        {"Id": "cron.service", "Slice": "system.slice", "FreezerState": "running"},
        {"Id": "user@0.service", "Slice": "user-0.slice", "FreezerState": "frozen"}]
    services = {n: {} for n in ("aegis-agent.service", "ssh.service", "dbus.service",
                                "systemd-journald.service", "systemd-logind.service",
                                "cron.service", "aegis-test-work.service",
                                "serial-getty@ttyS0.service", "app.service")}
    freeze, kept = Freezer.split(services, KEEP_UNITS)
    assert freeze == ["aegis-test-work.service", "app.service", "cron.service"]
    assert "aegis-agent.service" in kept and "ssh.service" in kept
    assert keep_unit("app.service", ["app"]) and not keep_unit("app2.service", ["app"])


# -- the quarantine's plan --------------------------------------------------------------------
def test_plan_adds_peers_never_removes_them() -> None:
    policy = {"quarantine": False, "management": ["10.0.0.1 tcp/22", "10.0.0.1 tcp/8443"]}
    assert plan(policy, [], "present") == (True, ["10.0.0.1 tcp/22", "10.0.0.1 tcp/8443"], None)
    assert plan(policy, ["10.0.0.1 tcp/22"], "present")[2] is None  # already there
    on, after, send = plan(policy, ["192.0.2.9 tcp/22"], "present")
    assert on and after == send == ["10.0.0.1 tcp/22", "10.0.0.1 tcp/8443", "192.0.2.9 tcp/22"]
    assert plan(policy, ["192.0.2.9"], "absent") == (False, policy["management"], None)


def test_render_is_stable_so_a_second_run_is_no_change() -> None:
    a = render(True, ["b 1", "a 2"], ["y.service", "x.service"])
    assert a == render(True, ["a 2", "b 1"], ["x.service", "y.service"])
    assert a != render(True, ["a 2", "b 1"], ["x.service"])
    assert render(False, [], []).startswith("quarantine: off\n")


# -- the bundle -------------------------------------------------------------------------------
def test_pack_builds_a_private_tar_in_memory_that_age_round_trips() -> None:
    data = pack({"a.json": b"{}", "b.txt": b"hello"}, 1_700_000_000)
    identity = pyrage.x25519.Identity.generate()
    cipher = pyrage.encrypt(data, [identity.to_public()])
    with tarfile.open(fileobj=io.BytesIO(pyrage.decrypt(cipher, [identity]))) as tar:
        assert tar.getnames() == ["a.json", "b.txt"]
        info = tar.getmember("b.txt")
        assert info.mode == 0o600 and info.mtime == 1_700_000_000
        assert tar.extractfile(info).read() == b"hello"  # type: ignore[union-attr]


# -- the agent's control socket (a real Unix socket) ------------------------------------------
def _serve(path: Path, answer: dict) -> tuple[threading.Thread, list[dict]]:
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(1)
    got: list[dict] = []

    def run() -> None:
        conn, _ = srv.accept()
        with conn, srv:
            got.append(json.loads(conn.makefile("rb").readline()))
            conn.sendall(json.dumps(answer).encode() + b"\n")

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, got


def test_agent_call_sends_one_line_and_returns_the_result(tmp_path: Path) -> None:
    path = tmp_path / "agent.sock"
    thread, got = _serve(path, {"ok": True, "result": {"quarantine": True}})
    assert agent_call(str(path), "quarantine", {"level": "hard"}) == {"quarantine": True}
    thread.join(5)
    assert got == [{"cmd": "quarantine", "args": {"level": "hard"}}]


def test_agent_call_reports_a_refusal_and_a_missing_agent(tmp_path: Path) -> None:
    path = tmp_path / "agent.sock"
    thread, _got = _serve(path, {"ok": False, "error": "segmentation is off"})
    with pytest.raises(AgentError, match="the agent refused 'quarantine': segmentation is off"):
        agent_call(str(path), "quarantine")
    thread.join(5)
    with pytest.raises(AgentError, match=r"the agent is not running .*systemctl start aegis-agent"):
        agent_call(str(tmp_path / "none.sock"), "status")



class _Systemd:
    """systemctl's answers for Freezer.services (list-units, then show)."""

    def __init__(self, listing: str, show: str) -> None:
        self.answers = {"list-units": (0, listing, ""), "show": (0, show, "")}

    def run(self, args: list[str]) -> tuple[int, str, str]:
        return self.answers[args[0]]


def test_only_running_services_with_their_own_cgroup_in_system_slice_are_candidates() -> None:
    listing = ("cron.service loaded active running Regular background program processing\n"
               "aegis-bpffs.service loaded active exited Mount bpffs\n"
               "user@0.service loaded active running User Manager for UID 0\n"
               "odd.service loaded active running no cgroup\n")
    show = ("Id=cron.service\nSlice=system.slice\nSubState=running\n"
            "ControlGroup=/system.slice/cron.service\nFreezerState=running\n\n"
            "Id=aegis-bpffs.service\nSlice=system.slice\nSubState=exited\nControlGroup=\n"
            "FreezerState=running\n\n"
            "Id=user@0.service\nSlice=user-0.slice\nSubState=running\n"
            "ControlGroup=/user.slice/user-0.slice/user@0.service\nFreezerState=running\n\n"
            "Id=odd.service\nSlice=system.slice\nSubState=running\nControlGroup=\n")
    freezer = Freezer(None, _Systemd(listing, show), cgroup_root="/nonexistent")
    assert freezer.method == "sigstop"  # no cgroup.controllers: not the unified hierarchy
    assert list(freezer.services()) == ["cron.service"]
    # a node sharing the host's cgroup namespace sees the full path
    nested = show.replace("ControlGroup=/system.slice/cron.service",
                          "ControlGroup=/libpod_parent/libpod-1a2b/system.slice/cron.service")
    freezer = Freezer(None, _Systemd(listing, nested), cgroup_root="/nonexistent")
    assert list(freezer.services()) == ["cron.service"]
    assert freezer._pids("") == [] and freezer._pids("/user.slice/x") == []
