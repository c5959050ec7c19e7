"""Bad fleet input fails before anything is created, at every layer."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from aegis_controller.terraform import Terraform, TerraformError
from aegis_lab.cleanup import leftovers
from aegis_lab.fleet import LocalFleet
from aegis_lab.naming import FleetNetwork, LabInputError, node_addressing
from conftest import sub_prefix
from harness import PATHS

pytestmark = pytest.mark.integration
LAB = str(Path(sys.executable).with_name("aegis-lab"))


@pytest.mark.parametrize(("args", "needle"), [
    (["--size", "0"], "1 to 32"),
    (["--size", "many"], "whole number"),
    (["--names", "web,Bad_Name"], "lowercase letters, digits and '-'"),
    (["--size", "1", "--caps", "privileged"], "invalid choice: 'privileged'"),
])
def test_cli_refuses_bad_fleet_before_creating_anything(args, needle):
    prefix = sub_prefix()
    proc = subprocess.run([LAB, "fleet", "up", "--prefix", prefix, *args],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr
    assert leftovers(prefix) == []
    assert not LocalFleet(prefix, PATHS).dir.exists()


def test_api_refuses_bad_size_before_creating_anything():
    fleet = LocalFleet(sub_prefix(), PATHS)
    with pytest.raises(LabInputError):
        fleet.up(size=40)
    assert not fleet.dir.exists()


def test_terraform_itself_rejects_unusable_node_names(tmp_path):
    """Even when called directly (bypassing the Python checks), the root module's
    validation stops a bad name at plan time: no bridge, no node is created."""
    prefix = sub_prefix()
    tf = Terraform(PATHS.fleet_module, data_dir=tmp_path / "tf.d",
                   state_path=tmp_path / "s.tfstate",
                   cli_config_file=PATHS.terraform_cli_config)
    net = FleetNetwork("10.213.250.0/24")
    tf.init()
    variables = {
        "lab_cli": LAB, "prefix": prefix, "nodes": {"ok": node_addressing(net, 0),
                                                    "Not_OK": node_addressing(net, 1)},
        "network": "10.213.250.0/24", "image": "none", "ssh_public_key_file": "/nonexistent",
        "ssh_private_key_file": "/nonexistent", "known_hosts_file": str(tmp_path / "kh"),
    }
    with pytest.raises(TerraformError, match="node names must be 1-32 characters"):
        tf.apply(variables)
    with pytest.raises(TerraformError, match="1 to 32 nodes"):
        tf.apply({**variables, "nodes": {f"n{i}": node_addressing(net, i % 32)
                                         for i in range(33)}})
    with pytest.raises(TerraformError, match="caps must be base, admin or agent"):
        tf.apply({**variables, "nodes": {"ok": node_addressing(net, 0)}, "caps": "all"})
    state = tmp_path / "s.tfstate"
    assert not state.exists() or json.loads(state.read_text()).get("resources", []) == []
    assert leftovers(prefix) == []
