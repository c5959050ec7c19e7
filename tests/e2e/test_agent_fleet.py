"""The agent on the local fleet: a real node (podman + systemd over SSH), the
``aegis.fleet.agent`` role, and a real controller listening on the fleet's bridge.

The hardening role records the golden measurements; the agent installed by the role
enrolls with a one-time token (response-wrapped by a real OpenBao and unwrapped on the
node), attests, and becomes trusted once the operator has set
the node's expected profile from that golden record. A changed golden file makes the node
suspect at its next attestation, with the file named in the reason; the segmentation
filter lets only SSH from the control node and the controller through: a listener on
another port of the node, reachable from the host before the agent, is not reachable
once the filter is attached (the SYN is dropped, not refused, and the filter's
``drop_no_edge`` counter moves) while SSH still answers.
"""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from aegis_lab.fleet import LocalFleet
from aegis_lab.playbook import ansible_playbook, ansible_results
from aegis_lab.podman import podman
from aegis_lab.wheels import build_agent_wheels
from conftest import sub_prefix
from harness import PATHS, OpenBao, local_fleet, openbao_dev, wait_until
from harness_controller import Server, controller_server

pytestmark = pytest.mark.e2e

NODE = "node1"


def _wait(pred, timeout: float = 90) -> bool:
    return wait_until(pred, timeout, 0.5)


@pytest.fixture(scope="module")
def lab() -> Iterator[tuple[LocalFleet, Server, OpenBao]]:
    build_agent_wheels(PATHS)
    prefix = sub_prefix()
    with local_fleet(prefix, 1, caps="agent") as fleet:
        gateway = fleet.info()["gateway"]
        with (controller_server(prefix, None, host=gateway) as server,
              openbao_dev(prefix, host=gateway) as bao):
            yield fleet, server, bao


def _agent_playbook(fleet: LocalFleet, server: Server, bao: OpenBao, token: str) -> Path:
    gw = fleet.info()["gateway"]
    bao_port = bao.addr.rsplit(":", 1)[1]
    play = [{
        "name": "Install the agent", "hosts": NODE, "gather_facts": False,
        "roles": [{"role": "aegis.fleet.agent", "vars": {
            "agent_controller_url": server.url,
            "agent_controller_ca": (server.state / "ca" / "ca.pem").read_text(),
            "agent_bootstrap_token": token,
            "agent_vault_url": bao.addr,
            "agent_vault_ca": Path(bao.ca_file).read_text() if bao.ca_file else "",
            "agent_interval": 1,
            "agent_attest_interval": 3600,
            "agent_segment_interface": "eth0",
            "agent_edges": [f"{gw} -> any tcp/22"],
            # the SSH source and the controller are added by the role itself
            "agent_management_peers": [f"{gw} tcp/{bao_port}"],
        }}],
    }]
    path = server.state / "agent.yml"
    path.write_text(yaml.safe_dump(play))
    return path


def _node(server: Server) -> dict:
    return json.loads(server.ctl("node", "show", NODE).stdout or "{}")


def _exec(fleet: LocalFleet, *cmd: str) -> subprocess.CompletedProcess:
    return podman("exec", f"{fleet.prefix}-{NODE}", *cmd, check=False)


PROBE_PORT = 8080  # no edge and no management peer allows it


def _connect(address: str, port: int, timeout: float = 3) -> str:
    """``open`` (and the server's first bytes if any), ``refused`` or ``timeout``."""
    try:
        with socket.create_connection((address, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            try:
                return "open " + sock.recv(16).decode(errors="replace")
            except TimeoutError:
                return "open"
    except ConnectionRefusedError:
        return "refused"
    except TimeoutError:
        return "timeout"


def _ingress_drops(fleet: LocalFleet) -> int:
    out = _exec(fleet, "/opt/aegis/agent/bin/aegis-agent", "segment", "--iface", "eth0",
                "counters")
    assert out.returncode == 0, out.stderr
    return int(json.loads(out.stdout)["ingress"]["drop_no_edge"])


def test_agent_role_enrolls_attests_and_drift_makes_the_node_suspect(lab) -> None:
    fleet, server, bao = lab
    # 1. the hardening role records what the node must measure
    harden = ansible_playbook(fleet, PATHS.playbooks / "harden.yml", tags="golden")
    assert harden.ok, harden.stdout[-3000:]
    # a service on a port the filter will not allow, reachable from the host for now
    address = fleet.info()["nodes"][NODE]["address"]
    probe = _exec(fleet, "systemd-run", "--unit=aegis-probe", "python3", "-m", "http.server",
                  str(PROBE_PORT), "--directory", "/run")
    assert probe.returncode == 0, probe.stderr
    assert _wait(lambda: _connect(address, PROBE_PORT).startswith("open"), 30), \
        _connect(address, PROBE_PORT)

    # 2. the agent role: install, hand over the response-wrapped token, unwrap, enroll
    issued = server.ctl("token", "issue", NODE,
                        env=bao.env)
    assert issued.returncode == 0 and "response-wrapped" in issued.stderr, issued.stderr
    token = issued.stdout.strip()
    playbook = _agent_playbook(fleet, server, bao, token)
    first = ansible_playbook(fleet, playbook)
    assert first.ok, first.stdout[-4000:]
    assert token not in first.stdout  # no_log
    assert token not in json.dumps([e.raw for e in first.results], default=str)
    assert _wait(lambda: _node(server).get("state") == "enrolled")
    assert _exec(fleet, "test", "-e", "/run/aegis/bootstrap-token").returncode == 1
    second = ansible_playbook(fleet, playbook)  # idempotent
    assert second.ok and second.changed == 0, second.stdout[-3000:]

    # the unit runs under systemd with its sandbox, the filter and monitors attached
    active = _exec(fleet, "systemctl", "is-active", "aegis-agent.service")
    assert active.stdout.strip() == "active", _exec(fleet, "journalctl", "-u", "aegis-agent",
                                                     "--no-pager", "-n", "50").stdout
    status = json.loads(_exec(fleet, "/opt/aegis/agent/bin/aegis-agent", "status").stdout)
    assert status["segment"]["attached"] and status["segment"]["iface"] == "eth0"
    # the role added its own SSH source and the controller, and confirmed the policy from
    # a new connection through the filter: nothing is left to revert
    gw = fleet.info()["gateway"]
    assert {f"{gw} tcp/22", f"{gw} tcp/{server.port}"} <= set(status["segment"]["management"])
    assert status["segment_unconfirmed_s"] is None
    events = _exec(fleet, "/opt/aegis/agent/bin/aegis-agent", "events", "--limit", "10000",
                   "--after", "-1").stdout
    whats = [json.loads(line)["data"].get("what") for line in events.splitlines()]
    assert "segment_confirmed" in whats and "segment_reverted" not in whats, whats
    assert status["controller"]["error"] is None, status["controller"]
    # the filter drops what no edge allows: the probe's port, from the host, times out
    # (a refusal would mean the SYN got through), its drop counter moves; SSH answers
    drops = _ingress_drops(fleet)
    assert _connect(address, PROBE_PORT) == "timeout"
    assert _exec(fleet, "systemctl", "is-active", "aegis-probe").stdout.strip() == "active"
    inside = _exec(fleet, "python3", "-c", "import urllib.request as u; "
                   f"print(u.urlopen('http://127.0.0.1:{PROBE_PORT}/', timeout=5).status)")
    assert inside.stdout.strip() == "200", inside.stderr  # still listening, on lo
    assert _ingress_drops(fleet) > drops
    assert _connect(address, 22).startswith("open SSH-")
    # the heartbeat's inventory, collected by the sandboxed agent on the node
    assert _wait(lambda: _node(server).get("inventory") is not None)
    inv = json.loads(_node(server)["inventory"])
    assert "openssh-server" in inv["packages"] and inv["os"].startswith("Debian"), inv["os"]
    assert inv["services"].get("aegis-agent.service") == "active/running", inv["services"]
    assert {"proto": "tcp", "port": 22} in [
        {"proto": s["proto"], "port": s["port"]} for s in inv["listening"]], inv["listening"]
    # no expected profile yet: nothing to be trusted against
    assert status["controller"]["attestation"]["state"] == "enrolled"

    # 3. the operator sets the expected profile from the golden record -> attest -> trusted
    golden = server.state / "golden.json"
    golden.write_text(_exec(fleet, "cat", "/var/lib/aegis/golden.json").stdout)
    # ... and pins the BPF programs and attach modes the node's agent reported
    assert _wait(lambda: _node(server).get("measurement") is not None)
    pinned = server.ctl("profile", "set", NODE, str(golden), "--pin-bpf")
    assert pinned.returncode == 0, pinned.stderr
    assert "mode:segment" in json.loads(pinned.stdout)["bpf"], pinned.stdout
    assert _wait(lambda: _node(server).get("state") == "trusted"), _node(server)

    # 4. a golden file changes on the node -> suspect at the next attestation
    res = ansible_results(fleet, NODE, "ansible.builtin.lineinfile",
                          "path=/etc/login.defs line='# drift'")
    assert res[NODE].get("changed"), res
    orders = server.ctl("order", "create", NODE, "attest", "--arg", "reason=test")
    assert orders.returncode == 0, orders.stderr
    assert _wait(lambda: _node(server).get("state") == "suspect"), _node(server)
    assert "/etc/login.defs" in _node(server)["reason"]
    assert server.ctl("ledger", "verify").returncode == 0
    # events from the node reached the controller, and they are the node's own
    assert _node(server)["events"] > 0
