"""The harden role's nftables step on one node of the session fleet: bad firewall values are
refused before anything changes, and a baseline that cuts the management path is rolled
back now *and* never reaches the boot files, so the node's next boot (nftables.service
loading /etc/nftables.conf) keeps it reachable. Every file, table and unit the tests touch
is put back as it was."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aegis_lab.playbook import ansible_env, ansible_results
from aegis_lab.podman import podman
from harness import PATHS

pytestmark = pytest.mark.e2e

HARDEN = PATHS.playbooks / "harden.yml"
NODE = "node2"
BOOT_FILES = "/etc/nftables.conf /etc/aegis/nftables/baseline.nft"
LOCKOUT = {"harden_nftables_management_networks": ["198.51.100.0/24"],
           "harden_nftables_allow_controller": False,
           "harden_nftables_allow_lockout_risk": True}


def _play(fleet, extra: dict, *args: str) -> tuple[int, dict]:
    env = ansible_env(fleet.paths, fleet)
    env.update({"ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
                "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1"})
    proc = subprocess.run([str(Path(sys.executable).with_name("ansible-playbook")), str(HARDEN),
                           "--limit", NODE, "-e", json.dumps(extra), *args], env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    try:
        return proc.returncode, json.loads(proc.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"no JSON from ansible-playbook (rc {proc.returncode}): "
                    f"{proc.stdout[-2000:]} {proc.stderr[-2000:]}")


def _failures(doc: dict) -> list[tuple[str, str]]:
    return [(t["task"]["name"], str(r.get("msg", "")))
            for p in doc["plays"] for t in p["tasks"] for r in t["hosts"].values()
            if r.get("failed") or r.get("unreachable")]


def _exec(fleet, script: str) -> str:
    """On the node through podman (break-glass: works whatever its firewall does)."""
    return podman("exec", f"{fleet.prefix}-{NODE}", "sh", "-c", script).stdout


def _ssh_ok(fleet) -> bool:
    res = ansible_results(fleet, NODE, "ansible.builtin.command", "true", timeout=60)
    return res.get(NODE, {}).get("rc") == 0


SNAPSHOT = (f"nft list ruleset | sha256sum; sha256sum {BOOT_FILES} 2>&1; "
            "systemctl is-enabled nftables.service 2>&1; "
            "find /etc -xdev -newer /proc/1 -type f 2>/dev/null | sort | sha256sum")


@pytest.fixture
def node_restored(fleet):
    """Whatever the test does to the node's firewall and boot files is undone afterwards."""
    original = _exec(fleet, "cat /etc/nftables.conf")
    enabled = _exec(fleet, "systemctl is-enabled nftables.service 2>/dev/null; true").strip()
    yield
    units = "aegis-nft-guard-rollback.timer aegis-nft-guard-rollback.service"
    podman("exec", "-i", f"{fleet.prefix}-{NODE}", "sh", "-c",
           f"systemctl stop {units}; systemctl reset-failed {units}; "
           "rm -f /run/aegis/nft-guard/aegis-nft-guard.nft; "
           "nft delete table inet aegis_baseline; rm -rf /etc/aegis/nftables; "
           "cat > /etc/nftables.conf; "
           + ("true" if enabled == "enabled" else "systemctl disable -q nftables.service"),
           input_bytes=original.encode(), check=False)


def test_bad_firewall_values_are_refused_before_anything_changes(fleet, node_restored):
    before = _exec(fleet, SNAPSHOT)
    rc, doc = _play(fleet, {
        "harden_nftables_inbound": [{"port": 99999, "proto": "tcp"},
                                    {"port": 443, "sources": ["10.0.0.0/8", "1.2.3.4/33"]}],
        "harden_nftables_management_networks": ["10.0.0.0/8", "not-a-network"]})
    assert rc != 0
    failures = _failures(doc)
    names = [name.split(" : ")[-1] for name, _ in failures]
    assert names == ["Check the firewall values"], failures
    msg = failures[0][1]
    assert msg.startswith("Nothing was changed: ")
    assert ("harden_nftables_inbound[0].port: 99999 is out of range; a port is a number "
            "from 1 to 65535") in msg
    assert "harden_nftables_inbound[1].sources[1]: '1.2.3.4/33' is not an IP address" in msg
    assert "harden_nftables_management_networks[1]: 'not-a-network'" in msg
    assert "write e.g. 10.0.0.0/8 or 192.0.2.7" in msg
    assert doc["stats"][NODE]["changed"] == 0, doc["stats"]

    # a protocol other than tcp/udp is refused by the role's argument spec, also first
    rc, doc = _play(fleet, {"harden_nftables_inbound": [{"port": 22, "proto": "foo"}]})
    assert rc != 0
    assert "value of proto must be one of: tcp, udp, got: foo" in json.dumps(doc)
    assert doc["stats"][NODE]["changed"] == 0, doc["stats"]
    assert _exec(fleet, SNAPSHOT) == before


def test_rolled_back_baseline_never_reaches_the_boot_files(fleet, node_restored):
    # 1. A good baseline, confirmed: only now does it go to the boot files.
    rc, doc = _play(fleet, {"harden_nftables_rollback_timeout": 30}, "--tags", "nftables")
    assert rc == 0, _failures(doc)
    boot = _exec(fleet, f"sha256sum {BOOT_FILES}")
    gateway = fleet.info()["gateway"]
    assert gateway in _exec(fleet, "cat /etc/aegis/nftables/baseline.nft")
    assert _exec(fleet, "systemctl is-enabled nftables.service").strip() == "enabled"

    # 2. A baseline that cuts SSH: the play loses the node, the guard restores the rules.
    started = time.monotonic()
    rc, doc = _play(fleet, {**LOCKOUT, "harden_nftables_rollback_timeout": 10},
                    "--tags", "nftables")
    assert rc != 0
    assert doc["stats"][NODE]["unreachable"] > 0, doc["stats"]
    while time.monotonic() < started + 120 and not _ssh_ok(fleet):
        time.sleep(2)
    assert _ssh_ok(fleet)

    # 3. The boot files still hold the confirmed baseline, not the rolled-back one ...
    assert "198.51.100.0/24" not in _exec(fleet, "cat /etc/aegis/nftables/baseline.nft")
    assert _exec(fleet, f"sha256sum {BOOT_FILES}") == boot
    # ... so what the next boot runs (nftables.service loads /etc/nftables.conf) keeps SSH.
    _exec(fleet, "systemctl restart nftables.service")
    assert gateway in _exec(fleet, "nft list table inet aegis_baseline")
    assert _ssh_ok(fleet), "the node's boot-time firewall cuts SSH"
