"""The acceptance path of the foundation: a real 2-node fleet through Terraform."""

import json
from pathlib import Path

import pytest

from aegis_lab.cleanup import down, leftovers
from aegis_lab.fleet import LocalFleet
from aegis_lab.playbook import ansible_results
from aegis_lab.podman import podman
from conftest import sub_prefix
from harness import PATHS

pytestmark = pytest.mark.e2e


def _facts(fleet: LocalFleet, node: str) -> dict:
    """machine-id and ed25519 host key of a node, read over SSH (strict host keys)."""
    res = ansible_results(fleet, node, "ansible.builtin.command",
                          "cat /etc/machine-id /etc/ssh/ssh_host_ed25519_key.pub")[node]
    assert res["rc"] == 0, res
    machine_id, host_key = res["stdout_lines"]
    assert len(machine_id) == 32
    return {"machine_id": machine_id, "host_key": host_key.split()[1]}


def test_fleet_create_ping_replace_destroy():
    prefix = sub_prefix()
    fleet = LocalFleet(prefix, PATHS)
    host_dmesg_restrict = Path("/proc/sys/kernel/dmesg_restrict").read_text()
    try:
        info = fleet.up(size=2)
        assert sorted(info["nodes"]) == ["node1", "node2"]

        ping = ansible_results(fleet, "aegis_fleet", "ansible.builtin.ping")
        assert sorted(ping) == ["node1", "node2"]
        for node, result in ping.items():
            assert result["ping"] == "pong", (node, result)
            assert not result.get("failed") and not result.get("unreachable"), (node, result)

        # Break-glass: the same hosts through podman exec, without the node network.
        glass = ansible_results(fleet, "aegis_fleet", "ansible.builtin.command",
                                "cat /etc/hostname", inventory=fleet.break_glass_inventory)
        assert {n: r["stdout"] for n, r in glass.items()} == {"node1": "node1", "node2": "node2"}

        before = _facts(fleet, "node2")
        other_before = _facts(fleet, "node1")
        address = info["nodes"]["node2"]["address"]

        after_info = fleet.replace("node2")
        assert after_info["nodes"]["node2"]["address"] == address
        assert after_info["nodes"]["node2"]["id"] != info["nodes"]["node2"]["id"]
        after = _facts(fleet, "node2")
        assert after["machine_id"] != before["machine_id"]
        assert after["host_key"] != before["host_key"]
        # The other node is untouched by the replace.
        assert _facts(fleet, "node1") == other_before

        # Kernel-global sysctls stay read-only inside a node; its own net ones are writable.
        res = ansible_results(fleet, "node1", "ansible.builtin.shell",
                              "echo 1 > /proc/sys/kernel/dmesg_restrict; echo rc=$?; "
                              "echo 1 > /proc/sys/net/ipv4/conf/all/rp_filter && echo net=ok")
        out = res["node1"]
        assert "Read-only file system" in out["stderr"], out
        assert out["stdout_lines"][0] != "rc=0", out
        assert out["stdout_lines"][1] == "net=ok", out
        assert Path("/proc/sys/kernel/dmesg_restrict").read_text() == host_dmesg_restrict

        # A fleet made without a capability level: root in its nodes holds nothing that
        # reaches the host's kernel (SYS_ADMIN 21, PERFMON 38, BPF 39), also after replace.
        assert info["caps"] == "base"
        for node in ("node1", "node2"):
            status = podman("exec", f"{prefix}-{node}", "cat", "/proc/1/status").stdout
            bounding = int(next(ln.split()[1] for ln in status.splitlines()
                                if ln.startswith("CapBnd:")), 16)
            assert [bit for bit in (21, 38, 39) if bounding >> bit & 1] == [], (node, status)
    finally:
        down(fleet)
    assert leftovers(prefix) == []
    assert not fleet.dir.exists()
    ps = podman("ps", "-a", "--format", "json")
    assert prefix not in json.dumps(json.loads(ps.stdout or "[]"))
