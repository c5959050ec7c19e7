"""aegis.fleet.harden on a fresh 3-node fleet: check mode changes nothing, converge,
idempotence, and no run can lock the operator out (broken sshd config, a firewall that
would cut the management path). Kernel-global settings of the host never change."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aegis_controller.playbook import Ansible
from aegis_lab.fleet import LocalFleet
from aegis_lab.playbook import ansible_env, ansible_results
from conftest import sub_prefix
from harness import PATHS, local_fleet

pytestmark = pytest.mark.e2e

HARDEN = PATHS.playbooks / "harden.yml"
HOST_KERNEL = [
    "kernel/kptr_restrict", "kernel/dmesg_restrict", "kernel/yama/ptrace_scope",
    "kernel/unprivileged_bpf_disabled", "kernel/sysrq", "kernel/perf_event_paranoid",
    "fs/suid_dumpable", "fs/protected_fifos", "net/core/bpf_jit_harden", "net/ipv4/ip_forward",
]
# What a check-mode run must leave exactly as it was.
SNAPSHOT = (
    "find /etc /usr/local/sbin /usr/share/pam-configs -xdev -type f -newer /proc/1 "
    "-printf '%p %s %m\\n' 2>/dev/null | sort | sha256sum; "
    "sha256sum /etc/ssh/sshd_config /etc/login.defs /etc/fstab /etc/pam.d/common-auth; "
    "nft list ruleset | sha256sum; findmnt -n -o TARGET,OPTIONS /tmp /var/tmp /dev/shm; "
    "sysctl -n net.ipv4.conf.all.rp_filter net.ipv4.conf.all.accept_redirects; "
    "ls /etc/systemd/system /var/lib/aegis 2>&1 | sha256sum"
)


def _host_kernel() -> dict[str, str]:
    paths = {k: Path("/proc/sys", k) for k in HOST_KERNEL}
    return {k: p.read_text() for k, p in paths.items() if p.exists()}


def _play(fleet: LocalFleet, *args: str, timeout: float = 900) -> tuple[int, dict]:
    """Run the harden playbook with the JSON callback; return (rc, the JSON document)."""
    env = ansible_env(fleet.paths, fleet)
    env.update({"ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
                "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1"})
    proc = subprocess.run([str(Path(sys.executable).with_name("ansible-playbook")), str(HARDEN),
                           *args], env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)
    try:
        doc = json.loads(proc.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"ansible-playbook printed no JSON (rc {proc.returncode}): "
                    f"{proc.stdout[-3000:]} {proc.stderr[-3000:]}")
    doc["_stderr"] = proc.stderr
    return proc.returncode, doc


def _failures(doc: dict) -> list[str]:
    out = []
    for play in doc["plays"]:
        for task in play["tasks"]:
            for host, res in task["hosts"].items():
                if res.get("failed") or res.get("unreachable"):
                    out.append(f"{host}: {task['task']['name']}: {res.get('msg', '')}")
    return out


def _snapshot(fleet: LocalFleet) -> dict[str, str]:
    res = ansible_results(fleet, "aegis_fleet", "ansible.builtin.shell", SNAPSHOT)
    return {host: r["stdout"] for host, r in res.items()}


def _ssh_ok(fleet: LocalFleet, node: str) -> bool:
    res = ansible_results(fleet, node, "ansible.builtin.command", "true", timeout=60)
    return res.get(node, {}).get("rc") == 0


@pytest.fixture(scope="module")
def fleet3():
    with local_fleet(sub_prefix(), 3, caps="admin") as fleet:  # mounts, nft scratch netns
        yield fleet


def test_audit_reports_and_changes_nothing(fleet3, tmp_path):
    """The audit runs the role in check mode with diffs (what a check-mode run reports is
    its ``would_change``): every node would change, none does, nor does the host."""
    host_before = _host_kernel()
    before = _snapshot(fleet3)
    # run the way an operator profiling it would: the caller's extra callbacks must not
    # reach the nested dry run, whose stdout is one JSON document
    env = dict(ansible_env(PATHS, fleet3),
               ANSIBLE_CALLBACKS_ENABLED="ansible.posix.profile_tasks")
    proc = Ansible(PATHS.runs, env=env).run(
        PATHS.playbooks / "audit.yml", extravars={"aegis_audit_report_dir": str(tmp_path)},
        timeout=1800, check=False)
    assert proc.ok, proc.stdout[-3000:]
    assert _snapshot(fleet3) == before
    assert _host_kernel() == host_before
    for node in ("node1", "node2", "node3"):
        report = json.loads((tmp_path / f"{node}.json").read_text())
        assert report["failed"] == []
        assert ("Write sshd_config (validated by sshd -t first), the trusted user CA keys and "
                "the principals directory") in [
            name.split(" : ")[-1] for name in report["would_change"]], report["would_change"]
        assert report["posture"]["container"] is True
        lynis = report["lynis"]
        assert lynis["available"], lynis
        assert 0 < int(lynis["hardening_index"]) <= 100
        # every finding is either waived (with the shipped file's reason) or listed as left
        waived = {(w["kind"], w["id"]) for w in lynis["waived"]}
        assert all(w["reason"] for w in lynis["waived"])
        for kind, plural in (("warning", "warnings"), ("suggestion", "suggestions")):
            left = lynis[f"{plural}_unwaived"]
            assert set(left) <= set(lynis[plural])
            assert len(left) + sum(w["kind"] == kind for w in lynis["waived"]) == len(lynis[plural])
        # no warning is left without a waiver (the image lists the security archive now)
        # but, on a node not converged yet, AIDE's missing baseline: the image carries AIDE,
        # the converge makes the baseline (./aegis bench harden audits after converge too)
        left = {w.split("|")[0] for w in lynis["warnings_unwaived"]}
        assert left <= {"FINT-4316"}, lynis["warnings_unwaived"]
        assert ("suggestion", "PKGS-7420") in waived, lynis["waived"]


def test_a_package_missing_from_the_image_fails_before_any_change(fleet3):
    """Packages come from the node image: one that is not there stops the run before it
    changes anything, naming the package and the fix, instead of reaching for a mirror."""
    before = _snapshot(fleet3)
    missing = "aegis-not-in-image"
    rc, doc = _play(fleet3, "--limit", "node1", "-e", json.dumps({
        "__harden_image_packages": ["sysstat", missing],
        "__harden_required_packages": ["sysstat", missing]}))
    assert rc != 0
    failures = _failures(doc)
    assert len(failures) == 1, failures
    assert "Check the packages the features need are in the node image" in failures[0]
    assert f"package(s) {missing} not in the node image" in failures[0]
    assert "add them to the image recipe" in failures[0]
    assert _snapshot(fleet3) == before


def test_converge_then_idempotent(fleet3):
    host_before = _host_kernel()
    started = time.monotonic()
    rc, doc = _play(fleet3)
    first = time.monotonic() - started
    assert rc == 0, _failures(doc) or doc["_stderr"][-3000:]
    assert all(doc["stats"][h]["changed"] > 0 for h in ("node1", "node2", "node3"))
    started = time.monotonic()
    rc, doc = _play(fleet3)
    second = time.monotonic() - started
    assert rc == 0, _failures(doc)
    changed = {h: s["changed"] for h, s in doc["stats"].items()}
    assert changed == {"node1": 0, "node2": 0, "node3": 0}, [
        (t["task"]["name"], h) for p in doc["plays"] for t in p["tasks"]
        for h, r in t["hosts"].items() if r.get("changed")]
    # The host's kernel-global settings are untouched by three hardened container nodes.
    assert _host_kernel() == host_before
    # The kernel settings were skipped with a reason, not silently.
    skipped = [r for p in doc["plays"] for t in p["tasks"] for r in t["hosts"].values()
               if "kernel-global sysctls" in str(r.get("msg", ""))]
    assert len(skipped) == 3
    print(f"\nconverge 3 nodes: first {first:.1f} s, second {second:.1f} s")


def test_broken_sshd_config_is_refused_and_node_stays_reachable(fleet3):
    before = ansible_results(fleet3, "node1", "ansible.builtin.stat",
                             "path=/etc/ssh/sshd_config checksum_algorithm=sha256")
    rc, doc = _play(fleet3, "--limit", "node1", "--tags", "sshd",
                    "-e", '{"harden_sshd_extra_options": {"NoSuchKeyword": "yes"}}')
    assert rc != 0
    failures = _failures(doc)
    assert any("sshd_config" in f and "validated" in f for f in failures), failures
    assert "NoSuchKeyword" in json.dumps(doc) or "Bad configuration option" in json.dumps(doc)
    after = ansible_results(fleet3, "node1", "ansible.builtin.stat",
                            "path=/etc/ssh/sshd_config checksum_algorithm=sha256")
    assert after["node1"]["stat"]["checksum"] == before["node1"]["stat"]["checksum"]
    assert _ssh_ok(fleet3, "node1")


def test_firewall_that_cuts_management_is_refused(fleet3):
    before = ansible_results(fleet3, "node2", "ansible.builtin.command", "nft list ruleset")
    rc, doc = _play(fleet3, "--limit", "node2", "--tags", "nftables", "-e", json.dumps({
        "harden_nftables_management_networks": ["198.51.100.0/24"],
        "harden_nftables_allow_controller": False}))
    assert rc != 0
    assert any("would drop SSH from" in f for f in _failures(doc)), _failures(doc)
    after = ansible_results(fleet3, "node2", "ansible.builtin.command", "nft list ruleset")
    assert after["node2"]["stdout"] == before["node2"]["stdout"]
    assert _ssh_ok(fleet3, "node2")


def test_firewall_that_cuts_management_is_rolled_back(fleet3):
    """Forced past the check, the ruleset goes in, the play loses the node, and the node
    restores its previous ruleset by itself after the rollback timeout."""
    before = ansible_results(fleet3, "node3", "ansible.builtin.command",
                             "nft list table inet aegis_baseline")["node3"]
    assert before["rc"] == 0, before
    timeout = 10
    started = time.monotonic()
    rc, doc = _play(fleet3, "--limit", "node3", "--tags", "nftables", "-e", json.dumps({
        "harden_nftables_management_networks": ["198.51.100.0/24"],
        "harden_nftables_allow_controller": False,
        "harden_nftables_allow_lockout_risk": True,
        "harden_nftables_rollback_timeout": timeout}), timeout=300)
    assert rc != 0
    assert doc["stats"]["node3"]["unreachable"] > 0, doc["stats"]
    # The node comes back by itself once the guard fires.
    deadline = started + timeout + 90
    while time.monotonic() < deadline and not _ssh_ok(fleet3, "node3"):
        time.sleep(2)
    assert _ssh_ok(fleet3, "node3")
    after = ansible_results(fleet3, "node3", "ansible.builtin.command",
                            "nft list table inet aegis_baseline")["node3"]
    assert after["stdout"] == before["stdout"]


def test_package_lock_refuses_changes_outside_a_converge(fleet3):
    res = ansible_results(fleet3, "node1", "ansible.builtin.command", "dpkg --purge less")["node1"]
    assert res["rc"] != 0
    assert "immutable" in res["stderr"] and "rebuild" in res["stderr"]
    still = ansible_results(fleet3, "node1", "ansible.builtin.command", "dpkg -s less")["node1"]
    assert still["rc"] == 0
