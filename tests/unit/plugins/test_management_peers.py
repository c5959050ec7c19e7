"""The agent role's management peers: the SSH source of the play and the controller are
added (once, only when nothing covers them yet), and what the role renders is a config
the agent accepts, with the confirmation window set."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from ansible.errors import AnsibleFilterError

from aegis_agent.config import parse_config
from ansible_collections.aegis.fleet.plugins.filter.management_peers import management_peers
from harness import REPO

pytestmark = pytest.mark.unit

SSH = "192.0.2.7 50022 192.0.2.2 22"
CONTROLLER = "https://192.0.2.1:8443"


def test_the_ssh_source_and_the_controller_are_added() -> None:
    assert management_peers([], SSH, CONTROLLER) == ["192.0.2.7 tcp/22", "192.0.2.1 tcp/8443"]
    assert management_peers(["10.0.0.0/8"], "", "") == ["10.0.0.0/8"]
    assert management_peers([], "192.0.2.7 50022 192.0.2.2 2222", "https://192.0.2.1") == [
        "192.0.2.7 tcp/2222", "192.0.2.1 tcp/443"]


def test_nothing_is_added_twice_or_where_a_peer_covers_it() -> None:
    covered = ["192.0.2.0/28 tcp/22", "192.0.2.1"]
    assert management_peers(covered, SSH, CONTROLLER) == covered
    assert management_peers(["192.0.2.7 tcp/23"], SSH, "") == ["192.0.2.7 tcp/23",
                                                                "192.0.2.7 tcp/22"]
    assert management_peers(["192.0.2.7 udp/22"], SSH, "") == ["192.0.2.7 udp/22",
                                                                "192.0.2.7 tcp/22"]


def test_names_and_ipv6_are_left_to_the_agent() -> None:
    assert management_peers([], "2001:db8::7 50022 2001:db8::2 22",
                            "https://controller.example:8443") == []


def test_a_malformed_ssh_connection_is_an_error() -> None:
    with pytest.raises(AnsibleFilterError, match="client_ip client_port"):
        management_peers([], "192.0.2.7", "")


def _render(tmp_path: Path, **extra: object) -> dict:
    out = tmp_path / "agent.yaml"
    play = [{"hosts": "localhost", "gather_facts": False, "connection": "local",
             "vars_files": [str(REPO / "roles/agent/defaults/main.yml"),
                            str(REPO / "roles/agent/vars/main.yml")],
             "tasks": [{"ansible.builtin.copy": {
                 "content": "{{ agent_config_base | to_nice_yaml }}", "dest": str(out)}}]}]
    (tmp_path / "play.yml").write_text(yaml.safe_dump(play))
    # extra vars: above the defaults file, as a play's role vars are above role defaults
    given = {"agent_segment_interface": "eth0", "agent_controller_url": CONTROLLER,
             "agent_management_peers": ["198.51.100.0/28"],
             "agent_connection_env": {"ansible_facts": {"ansible_env": {"SSH_CONNECTION": SSH}}},
             **extra}
    proc = subprocess.run(["ansible-playbook", "-i", "localhost,", "-e", json.dumps(given),
                           str(tmp_path / "play.yml")],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return yaml.safe_load(out.read_text())


def test_the_role_renders_the_peers_into_a_config_the_agent_accepts(tmp_path: Path) -> None:
    cfg = _render(tmp_path)
    assert cfg["segment"]["management"] == ["198.51.100.0/28", "192.0.2.7 tcp/22",
                                            "192.0.2.1 tcp/8443"]
    segment = parse_config(yaml.safe_dump(cfg)).segment
    assert segment.confirm_seconds == 120 and len(segment.management) == 3
    off = _render(tmp_path, agent_management_auto=False, agent_segment_confirm_seconds=0)
    assert off["segment"]["management"] == ["198.51.100.0/28"]
    assert parse_config(yaml.safe_dump(off)).segment.confirm_seconds is None
