"""Bad fleet input fails before anything is created, at every layer."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from aegis_controller.lab.fleet import CLI_CONFIG, FLEET_MODULE, LocalFleet, leftovers
from aegis_controller.lab.naming import LabInputError
from aegis_controller.terraform import Terraform, TerraformError
from conftest import sub_prefix

pytestmark = pytest.mark.integration
LAB = str(Path(sys.executable).with_name("aegis-lab"))


@pytest.mark.parametrize(("args", "needle"), [
    (["--size", "0"], "1 to 32"),
    (["--size", "many"], "whole number"),
    (["--names", "web,Bad_Name"], "lowercase letters, digits and '-'"),
])
def test_cli_refuses_bad_fleet_before_creating_anything(args, needle):
    prefix = sub_prefix()
    proc = subprocess.run([LAB, "fleet", "up", "--prefix", prefix, *args],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr
    assert leftovers(prefix) == []
    assert not LocalFleet(prefix).dir.exists()


def test_api_refuses_bad_size_before_creating_anything():
    fleet = LocalFleet(sub_prefix())
    with pytest.raises(LabInputError):
        fleet.up(size=40)
    assert not fleet.dir.exists()


def test_terraform_itself_rejects_unusable_node_names(tmp_path):
    """Even when called directly (bypassing the Python checks), the root module's
    validation stops a bad name at plan time: no bridge, no node is created."""
    prefix = sub_prefix()
    tf = Terraform(FLEET_MODULE, data_dir=tmp_path / "tf.d", state_path=tmp_path / "s.tfstate",
                   cli_config_file=CLI_CONFIG)
    tf.init()
    variables = {
        "lab_cli": LAB, "prefix": prefix, "nodes": {"ok": 0, "Not_OK": 1},
        "network": "10.213.250.0/24", "image": "none", "ssh_public_key_file": "/nonexistent",
        "ssh_private_key_file": "/nonexistent", "known_hosts_file": str(tmp_path / "kh"),
    }
    with pytest.raises(TerraformError, match="node names must be 1-32 characters"):
        tf.apply(variables)
    with pytest.raises(TerraformError, match="1 to 32 nodes"):
        tf.apply({**variables, "nodes": {f"n{i}": i for i in range(33)}})
    state = tmp_path / "s.tfstate"
    assert not state.exists() or json.loads(state.read_text()).get("resources", []) == []
    assert leftovers(prefix) == []
