"""aegis.fleet modules on real lab nodes: change, idempotence, check and diff mode, the
commit-confirmed rollback guard against a ruleset that cuts the management path, and
clear errors for bad arguments. Uses the session fleet (marker e2e) and leaves its nodes
as it found them: every table, drop-in, guard unit and saved file is removed again."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aegis_lab.playbook import ansible_env

pytestmark = pytest.mark.e2e

TABLE = """table inet aegis_modtest {
    chain input {
        type filter hook input priority filter; policy accept;
        tcp dport 9 counter drop
    }
}"""
GUARD_DIR = "/run/aegis/nft-guard"


def _json_env(fleet) -> dict:
    env = ansible_env(fleet.paths, fleet)
    env.update(
        {"ANSIBLE_LOAD_CALLBACK_PLUGINS": "1", "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json"}
    )
    return env


def _run(fleet, module, args, *flags, host="node1"):
    """One module ad hoc on ``host`` (``args`` a dict sent as JSON, or a free-form string);
    ``flags`` such as --check and --diff go to ansible. Returns the host's result."""
    argstr = args if isinstance(args, str) else json.dumps(args)
    doc = _ansible_json(fleet, "ansible", [host, "-m", module, "-a", argstr, *flags], 300)
    return doc["plays"][0]["tasks"][0]["hosts"][host]


def _ansible_json(fleet, tool, argv, timeout):
    """Run an Ansible command line with the JSON callback; its parsed output."""
    exe = Path(sys.executable).with_name(tool)
    proc = subprocess.run([str(exe), *argv], env=_json_env(fleet), capture_output=True,
                          text=True, timeout=timeout, check=False)
    return json.loads(proc.stdout)


def _playbook(fleet, path):
    """Run a playbook; returns [(task name, host result)] in order."""
    doc = _ansible_json(fleet, "ansible-playbook", [str(path)], 600)
    return [
        (task["task"]["name"], task["hosts"]["node1"])
        for play in doc["plays"]
        for task in play["tasks"]
        if "node1" in task["hosts"]
    ]


def _sh(fleet, script, host="node1"):
    return _run(fleet, "ansible.builtin.shell", script, host=host)


def _tables(fleet):
    return _sh(fleet, "nft list tables")["stdout"]


def _cleanup_nft(fleet, *guards):
    """Delete the test tables and any guard state, whatever a failed test left."""
    units = " ".join(f"{g}-rollback.timer {g}-rollback.service" for g in guards)
    _sh(
        fleet,
        f"systemctl stop {units} 2>/dev/null; systemctl reset-failed {units} 2>/dev/null; "
        + " ".join(f"rm -f {GUARD_DIR}/{g}.nft;" for g in guards)
        + " for t in aegis_modtest aegis_locktest; do nft delete table inet $t 2>/dev/null; done;"
        + " true",
    )


def test_nft_ruleset_check_diff_apply_idempotent_and_removed(fleet):
    try:
        checked = _run(fleet, "aegis.fleet.nft_ruleset", {"content": TABLE}, "--check", "--diff")
        assert checked["changed"] and not checked.get("failed"), checked
        assert checked["diff"]["before"] == ""
        assert "tcp dport 9 counter drop" in checked["diff"]["after"], checked["diff"]
        assert checked["guard"] == "none"
        # Check mode changed nothing and armed nothing.
        assert "aegis_modtest" not in _tables(fleet)
        assert _sh(fleet, f"ls {GUARD_DIR} 2>/dev/null | wc -l")["stdout"] == "0"

        first = _run(
            fleet, "aegis.fleet.nft_ruleset", {"content": TABLE, "rollback_timeout": 0}, "--diff"
        )
        assert first["changed"] and first["guard"] == "none", first
        assert first["diff"]["after"] == checked["diff"]["after"]
        again = _run(fleet, "aegis.fleet.nft_ruleset", {"content": TABLE, "rollback_timeout": 0})
        assert again["changed"] is False, again
        listed = _sh(fleet, "nft list table inet aegis_modtest")["stdout"]
        assert "tcp dport 9 counter packets 0 bytes 0 drop" in listed

        # A different table in check mode: a diff of both sides, the node untouched.
        other = TABLE.replace("dport 9", "dport 19")
        checked = _run(fleet, "aegis.fleet.nft_ruleset", {"content": other}, "--check", "--diff")
        assert checked["changed"], checked
        assert "dport 9 " in checked["diff"]["before"] and "dport 19 " in checked["diff"]["after"]
        assert _sh(fleet, "nft list table inet aegis_modtest")["stdout"] == listed

        gone = _run(
            fleet,
            "aegis.fleet.nft_ruleset",
            {"tables": ["inet aegis_modtest"], "state": "absent", "rollback_timeout": 0},
        )
        assert gone["changed"], gone
        assert "aegis_modtest" not in _tables(fleet)
        gone_again = _run(
            fleet,
            "aegis.fleet.nft_ruleset",
            {"tables": ["inet aegis_modtest"], "state": "absent", "rollback_timeout": 0},
        )
        assert gone_again["changed"] is False, gone_again
    finally:
        _cleanup_nft(fleet, "aegis-nft-guard")


def test_guarded_change_is_kept_when_confirmed_over_a_new_connection(fleet, tmp_path):
    book = tmp_path / "confirm.yml"
    book.write_text(f"""
- name: Guarded change, confirmed
  hosts: node1
  gather_facts: false
  tasks:
    - name: apply
      aegis.fleet.nft_ruleset:
        content: {json.dumps(TABLE)}
        rollback_timeout: 20
        guard_name: aegis-modtest
    - name: reconnect
      ansible.builtin.meta: reset_connection
    - name: confirm
      aegis.fleet.nft_ruleset:
        state: confirmed
        guard_name: aegis-modtest
    - name: confirm again
      aegis.fleet.nft_ruleset:
        state: confirmed
        guard_name: aegis-modtest
""")
    try:
        results = dict(_playbook(fleet, book))
        assert results["apply"]["changed"] and results["apply"]["guard"] == "armed", results[
            "apply"
        ]
        assert results["apply"]["rollback_unit"] == "aegis-modtest-rollback.timer"
        assert results["confirm"]["changed"] and results["confirm"]["guard"] == "disarmed", results
        assert results["confirm"]["tables"] == ["inet aegis_modtest"]
        assert (
            results["confirm again"]["changed"] is False
            and results["confirm again"]["guard"] == "none"
        )
        state = _sh(
            fleet,
            "systemctl is-active aegis-modtest-rollback.timer; "
            f"ls {GUARD_DIR}/aegis-modtest.nft 2>&1",
        )
        assert state["stdout_lines"][0] in ("inactive", "unknown"), state
        assert "No such file" in state["stdout_lines"][1]
        assert "aegis_modtest" in _tables(fleet)  # confirmed: kept
    finally:
        _cleanup_nft(fleet, "aegis-modtest")


OLD_TABLE = """table inet aegis_locktest {
    chain input {
        type filter hook input priority filter; policy accept;
        tcp dport 7 drop comment "before the lockout"
    }
}"""
# Default-drop inbound without an SSH accept: established connections keep working (so
# the applying task returns), every new SSH connection is dropped.
LOCKOUT = """table inet aegis_locktest {
    chain input {
        type filter hook input priority filter; policy drop;
        iif "lo" accept
        ct state established,related accept
    }
}"""


def test_ruleset_that_cuts_ssh_rolls_back_by_itself(fleet, tmp_path):
    book = tmp_path / "lockout.yml"
    book.write_text(f"""
- name: A ruleset that cuts the management path
  hosts: node1
  gather_facts: false
  vars:
    ansible_ssh_timeout: 5
  tasks:
    - name: old table
      aegis.fleet.nft_ruleset:
        content: {json.dumps(OLD_TABLE)}
        rollback_timeout: 0
    - name: apply the lockout
      aegis.fleet.nft_ruleset:
        content: {json.dumps(LOCKOUT)}
        rollback_timeout: 10
        guard_name: aegis-locktest
    - name: reconnect
      ansible.builtin.meta: reset_connection
    - name: confirm
      aegis.fleet.nft_ruleset:
        state: confirmed
        guard_name: aegis-locktest
      ignore_unreachable: true
""")
    try:
        start = time.monotonic()
        results = dict(_playbook(fleet, book))
        assert results["old table"]["changed"], results["old table"]
        applied = results["apply the lockout"]
        assert applied["changed"] and applied["guard"] == "armed", applied
        confirm = results["confirm"]
        assert confirm.get("unreachable") is True, confirm
        assert "port 22" in confirm["msg"], confirm

        # The node restores the old table by itself after 10 s; SSH works again.
        deadline = start + 60
        while True:
            res = _run(fleet, "ansible.builtin.command", "nft list table inet aegis_locktest")
            if not res.get("unreachable"):
                break
            assert time.monotonic() < deadline, res
            time.sleep(2)
        elapsed = time.monotonic() - start
        assert res["rc"] == 0, res
        assert 'tcp dport 7 drop comment "before the lockout"' in res["stdout"], res["stdout"]
        assert "policy accept" in res["stdout"]
        assert elapsed >= 10, elapsed

        # Confirming now fails loudly: nothing to confirm, the change was undone.
        late = _run(
            fleet, "aegis.fleet.nft_ruleset", {"state": "confirmed", "guard_name": "aegis-locktest"}
        )
        assert late.get("failed") and late["guard"] == "fired", late
        assert "already rolled back" in late["msg"] and late["rollback_result"] == "success", late
        assert late["tables"] == ["inet aegis_locktest"]
    finally:
        _cleanup_nft(fleet, "aegis-locktest")
    assert "aegis_locktest" not in _tables(fleet)


@pytest.mark.parametrize(
    ("module", "args", "needles"),
    [
        (
            "aegis.fleet.systemd_sandbox",
            {"unit": "nosuch.service", "settings": {"PrivateTmp": True}},
            [
                "unit: nosuch.service is not loaded",
                "LoadState=not-found",
                "systemctl list-unit-files",
            ],
        ),
        (
            "aegis.fleet.systemd_sandbox",
            {"unit": "cron", "settings": {"PrivateTmp": True}},
            ["unit: 'cron' is not a service, socket, mount or swap unit name", "cron.service"],
        ),
        (
            "aegis.fleet.systemd_sandbox",
            {"unit": "cron.service", "settings": {"PrivateTemp": True}},
            ["settings: unknown directive(s) PrivateTemp", "allow_unknown"],
        ),
        (
            "aegis.fleet.systemd_sandbox",
            {"unit": "cron.service", "settings": {"ReadOnlyPaths": {"a": 1}}},
            ["settings: ReadOnlyPaths has the value", "flat list"],
        ),
        (
            "aegis.fleet.systemd_sandbox",
            {"unit": "cron.service"},
            ["state is present but all of the following are missing: settings"],
        ),
        (
            "aegis.fleet.nft_ruleset",
            {"content": "table inet t { set s { type ipv4_addr; elements = { 10.0.0.300 } } }"},
            ["content: nft cannot load it"],
        ),
        (
            "aegis.fleet.nft_ruleset",
            {"content": TABLE, "tables": ["inet x"]},
            ["mutually exclusive", "content", "tables"],
        ),
        (
            "aegis.fleet.nft_ruleset",
            {"tables": ["inet"], "state": "absent"},
            ["tables: 'inet' is not 'FAMILY NAME'"],
        ),
        (
            "aegis.fleet.nft_ruleset",
            {"content": "flush ruleset\n" + TABLE},
            ["content: content may only declare whole tables", "'flush ruleset'"],
        ),
        (
            "aegis.fleet.nft_ruleset",
            {"content": TABLE, "guard_name": "../x"},
            ["guard_name: '../x' may hold only letters"],
        ),
        (
            "aegis.fleet.nft_ruleset",
            {"content": TABLE, "rollback_timeout": -1},
            ["rollback_timeout: must be 0 (no guard)"],
        ),
        (
            "aegis.fleet.nft_ruleset",
            {"state": "confirmed", "content": TABLE},
            ["content, tables: state=confirmed takes neither"],
        ),
        ("aegis.fleet.hardening_facts", {"units": ["cron"]}, ["units: 'cron' not full unit names"]),
    ],
)
def test_bad_arguments_name_the_argument_and_the_fix(fleet, module, args, needles):
    res = _run(fleet, module, args)
    assert res.get("failed"), res
    for needle in needles:
        assert needle in res["msg"], res["msg"]
    assert "aegis_" not in _tables(fleet)


def test_systemd_sandbox_scores_checks_and_is_idempotent(fleet):
    settings = {
        "NoNewPrivileges": True,
        "PrivateTmp": True,
        "ProtectHome": "read-only",
        "ProtectSystem": "full",
        "ProtectKernelTunables": True,
        "ProtectKernelModules": True,
        "ProtectControlGroups": True,
        "RestrictRealtime": True,
        "LockPersonality": True,
        "RestrictAddressFamilies": ["AF_UNIX", "AF_INET", "AF_INET6"],
    }
    args = {
        "unit": "cron.service",
        "settings": settings,
        "name": "60-aegis-modtest",
        "restart": True,
    }
    path = "/etc/systemd/system/cron.service.d/60-aegis-modtest.conf"
    try:
        checked = _run(fleet, "aegis.fleet.systemd_sandbox", args, "--check", "--diff")
        assert checked["changed"] and not checked["restarted"], checked
        assert (
            checked["diff"]["before"] == "" and "ProtectHome=read-only" in checked["diff"]["after"]
        )
        assert "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6" in checked["diff"]["after"]
        assert _sh(fleet, f"test -e {path} && echo there || echo absent")["stdout"] == "absent"

        first = _run(fleet, "aegis.fleet.systemd_sandbox", args)
        assert first["changed"] and first["restarted"], first
        assert first["exposure_after"] < first["exposure_before"], first
        print(f"cron.service exposure {first['exposure_before']} -> {first['exposure_after']}")
        second = _run(fleet, "aegis.fleet.systemd_sandbox", args)
        assert second["changed"] is False and second["restarted"] is False, second
        assert second["exposure_before"] == first["exposure_after"]
        # The sandbox is in force in the running service's mount namespace.
        home = _sh(
            fleet,
            "nsenter -t $(systemctl show -p MainPID --value cron.service) -m "
            "findmnt -n -o OPTIONS --target /home",
        )
        assert "ro" in home["stdout"].split(","), home
    finally:
        cleanup = _run(fleet, "aegis.fleet.systemd_sandbox", {**args, "state": "absent"})
        assert not cleanup.get("failed"), cleanup
    assert cleanup["changed"] and cleanup["exposure_after"] == first["exposure_before"], cleanup
    left = _sh(
        fleet, "ls /etc/systemd/system/cron.service.d 2>&1; systemctl is-active cron.service"
    )
    assert "No such file" in left["stdout_lines"][0] and left["stdout_lines"][1] == "active", left


def test_hardening_facts_on_a_container_node(fleet):
    res = _run(
        fleet,
        "aegis.fleet.hardening_facts",
        {"measure": ["/etc/hostname", "/nonexistent"], "units": ["cron.service", "nosuch.service"]},
        "--check",
    )
    facts = res["ansible_facts"]["aegis_hardening"]
    assert res["changed"] is False
    assert facts["container"] is True and facts["virtualization"] == "podman"
    assert facts["kernel_sysctls_writable"] is False
    assert facts["sysctl"]["net.ipv4.tcp_syncookies"] in ("0", "1")
    assert (
        facts["sysctl"]["kernel.kptr_restrict"]
        == Path("/proc/sys/kernel/kptr_restrict").read_text().strip()
    )
    assert facts["sshd"]["port"] == "22"
    assert facts["mounts"]["/tmp"]["fstype"] == "tmpfs"
    assert len(facts["measurements"]["/etc/hostname"]) == 64
    assert facts["measurements"]["/nonexistent"] is None
    assert list(facts["unit_exposure"]) == ["cron.service"]
    assert 0 < facts["unit_exposure"]["cron.service"] <= 10



def _iif_table(port: int, iface: str = "") -> str:
    rule = f'iif "{iface}" accept' if iface else f"tcp dport {port} drop"
    return TABLE.replace("tcp dport 9 counter drop", rule)


def test_guard_is_not_armed_when_its_restore_script_would_not_load(fleet):
    """A second change before confirmation keeps the state the guard saved first. Here that
    state matches an interface by index (iif) that is gone since, so nft can no longer load
    it and a rollback would leave the new rules in force: the module must see this (nft -c)
    before it arms the guard again or changes anything."""
    guard = "aegis-restoretest"
    iface = "aegisrt0"
    try:
        _sh(fleet, f"ip link add {iface} type veth peer name aegisrt1")
        base = _run(fleet, "aegis.fleet.nft_ruleset",
                    {"content": _iif_table(0, iface), "rollback_timeout": 0})
        assert base["changed"], base
        first = _run(fleet, "aegis.fleet.nft_ruleset",
                     {"content": _iif_table(19), "rollback_timeout": 120, "guard_name": guard})
        assert first["changed"] and first["guard"] == "armed", first
        saved = _sh(fleet, f"cat {GUARD_DIR}/{guard}.nft")["stdout"]
        assert f'iif "{iface}"' in saved, saved
        _sh(fleet, f"ip link del {iface}")
        before = _sh(fleet, "nft list table inet aegis_modtest")["stdout"]
        for flags in (("--check",), ()):
            res = _run(fleet, "aegis.fleet.nft_ruleset",
                       {"content": _iif_table(29), "rollback_timeout": 120, "guard_name": guard},
                       *flags)
            assert res.get("failed"), res
            assert "the rollback guard could not restore inet aegis_modtest" in res["msg"], res
            assert "nft -c rejects the restore script" in res["msg"]
            assert "Interface does not exist" in res["msg"]
            assert "Nothing was changed and no guard was armed" in res["msg"]
        # the table is as it was, and the guard still holds the state saved first
        assert _sh(fleet, "nft list table inet aegis_modtest")["stdout"] == before
        assert "dport 19" in before
        assert _sh(fleet, f"cat {GUARD_DIR}/{guard}.nft")["stdout"] == saved
    finally:
        _cleanup_nft(fleet, guard)
        _sh(fleet, f"ip link del {iface} 2>/dev/null; true")
