"""The acceptance path of the foundation: a real 2-node fleet through Terraform."""

import json
import subprocess

import pytest

from aegis_controller.lab.fleet import LocalFleet, leftovers
from aegis_controller.lab.playbook import ansible
from conftest import sub_prefix

pytestmark = pytest.mark.e2e


def _facts(fleet: LocalFleet, node: str) -> dict:
    """machine-id and ed25519 host key of a node, read over SSH (strict host keys)."""
    res = ansible(fleet, node, "-m", "ansible.builtin.command", "-a",
                  "cat /etc/machine-id /etc/ssh/ssh_host_ed25519_key.pub", "-o")
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout.split("(stdout)", 1)[1].strip().split("\\n")
    return {"machine_id": out[0].strip(), "host_key": out[1].split()[1]}


def test_fleet_create_ping_replace_destroy():
    prefix = sub_prefix()
    fleet = LocalFleet(prefix)
    try:
        info = fleet.up(size=2)
        assert sorted(info["nodes"]) == ["node1", "node2"]

        ping = ansible(fleet, "aegis_fleet", "-m", "ansible.builtin.ping", "-o")
        assert ping.returncode == 0, ping.stdout + ping.stderr
        for node in ("node1", "node2"):
            assert f'{node} | SUCCESS => {{"changed": false, "ping": "pong"}}' in ping.stdout

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
        res = ansible(fleet, "node1", "-m", "ansible.builtin.shell", "-a",
                      "echo 1 > /proc/sys/kernel/dmesg_restrict; echo rc=$?; "
                      "echo 1 > /proc/sys/net/ipv4/conf/all/rp_filter && echo net=ok", "-o")
        assert "Read-only file system" in res.stdout and "net=ok" in res.stdout
    finally:
        fleet.down()
    assert leftovers(prefix) == []
    assert not fleet.dir.exists()
    ps = subprocess.run(["podman", "ps", "-a", "--format", "json"], capture_output=True, text=True,
                        check=False)
    assert prefix not in json.dumps(json.loads(ps.stdout or "[]"))
