"""The aegis.fleet.fleet inventory plugin, run through the real ``ansible-inventory``.

Each test writes a Terraform state (or ``terraform output -json``) file and an inventory
source into tmp_path, points ANSIBLE_COLLECTIONS_PATH at a tree whose
ansible_collections/aegis/fleet is this checkout, and reads ``ansible-inventory --list``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness import REPO as REPO_ROOT

pytestmark = pytest.mark.unit

ANSIBLE_INVENTORY = str(Path(sys.executable).parent / "ansible-inventory")
ANSIBLE_DOC = str(Path(sys.executable).parent / "ansible-doc")
SSH_ARGS = "-o UserKnownHostsFile={} -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes"


def fleet_value(prefix: str = "at1a2b", nodes: dict | None = None) -> dict:
    """A fleet output value as terraform/fleets/local writes it."""
    if nodes is None:
        nodes = {
            "node1": {"address": "10.213.7.10", "mac": "02:ae:0a:d5:07:0a",
                      "container": f"{prefix}-node1", "slot": 0, "id": "c0ffee1"},
            "node2": {"address": "10.213.7.11", "mac": "02:ae:0a:d5:07:0b",
                      "container": f"{prefix}-node2", "slot": 1, "id": "c0ffee2"},
        }
    return {
        "prefix": prefix,
        "bridge": f"{prefix}-br",
        "network": "10.213.7.0/24",
        "gateway": "10.213.7.1",
        "ssh_user": "root",
        "ssh_private_key": "/abs/path/id_ed25519",
        "known_hosts": "/abs/path/known_hosts",
        "nodes": nodes,
    }


def state_doc(outputs: dict) -> dict:
    """A Terraform (v4) state file with the given output values."""
    return {
        "version": 4,
        "terraform_version": "1.9.8",
        "serial": 7,
        "lineage": "6f1c1f0e-0000-4000-8000-000000000000",
        "outputs": {name: {"value": value, "type": ["object", {}]}
                    for name, value in outputs.items()},
        "resources": [],
        "check_results": None,
    }


def outputs_doc(outputs: dict) -> dict:
    """What ``terraform output -json`` prints for the given output values."""
    return {name: {"sensitive": False, "type": ["object", {}], "value": value}
            for name, value in outputs.items()}


def write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data, indent=2))
    return path


def write_source(tmp_path: Path, text: str, name: str = "inventory.aegis_fleet.yml") -> Path:
    path = tmp_path / name
    path.write_text("plugin: aegis.fleet.fleet\n" + text)
    return path


def unwrap(value: object) -> object:
    """Drop 2.19's ``{"__ansible_unsafe": ...}`` markers from --list output."""
    if isinstance(value, dict):
        if set(value) == {"__ansible_unsafe"}:
            return value["__ansible_unsafe"]
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    return value


@pytest.fixture
def run(tmp_path):
    """Run an Ansible CLI with only this checkout's collection and this plugin enabled."""
    collections = tmp_path / "collections"
    (collections / "ansible_collections" / "aegis").mkdir(parents=True)
    (collections / "ansible_collections" / "aegis" / "fleet").symlink_to(REPO_ROOT)
    (tmp_path / "ansible-tmp").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update({
        "ANSIBLE_COLLECTIONS_PATH": str(collections),
        "ANSIBLE_INVENTORY_ENABLED": "aegis.fleet.fleet",
        "ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED": "true",
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp"),
        "ANSIBLE_NOCOLOR": "1",
        "COLUMNS": "1000",
    })

    def _run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=120, check=False)

    return _run


@pytest.fixture
def inventory(run):
    """``ansible-inventory -i SOURCE --list`` as a dict; fails the test on a non-zero exit."""

    def _inventory(source: Path) -> dict:
        proc = run(ANSIBLE_INVENTORY, "-i", str(source), "--list")
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    return _inventory


@pytest.fixture
def inventory_error(run):
    """Run ansible-inventory on a source that must fail; return stderr, whitespace-normalised."""

    def _error(source: Path) -> str:
        proc = run(ANSIBLE_INVENTORY, "-i", str(source), "--list")
        assert proc.returncode != 0, proc.stdout
        assert "Traceback" not in proc.stderr
        assert "aegis.fleet.fleet:" in proc.stderr
        assert str(source) in proc.stderr  # the message names the inventory source
        return " ".join(proc.stderr.split())

    return _error


def hosts_of(inv: dict, group: str) -> list[str]:
    return sorted(inv.get(group, {}).get("hosts", []))


# -- working inventories ----------------------------------------------------------------

def test_state_file_gives_hosts_groups_and_ssh_vars(tmp_path, inventory):
    (tmp_path / "state").mkdir()
    write_json(tmp_path / "state" / "terraform.tfstate", state_doc({"fleet": fleet_value()}))
    inv = inventory(write_source(tmp_path, "state_file: state/terraform.tfstate\n"))  # relative

    assert hosts_of(inv, "aegis_fleet") == ["node1", "node2"]
    assert hosts_of(inv, "aegis_at1a2b") == ["node1", "node2"]
    hostvars = unwrap(inv["_meta"]["hostvars"])
    assert hostvars["node1"] == {
        "aegis_node_address": "10.213.7.10",
        "aegis_node_container": "at1a2b-node1",
        "aegis_node_slot": 0,
        "aegis_fleet_prefix": "at1a2b",
        "ansible_host": "10.213.7.10",
        "ansible_user": "root",
        "ansible_ssh_private_key_file": "/abs/path/id_ed25519",
        "ansible_ssh_common_args": SSH_ARGS.format("/abs/path/known_hosts"),
    }
    assert hostvars["node2"]["ansible_host"] == "10.213.7.11"
    assert hostvars["node2"]["aegis_node_slot"] == 1
    # Terraform's strings are data, not templates: ansible-core marks them unsafe.
    assert inv["_meta"]["hostvars"]["node1"]["ansible_host"] == {"__ansible_unsafe": "10.213.7.10"}


def test_outputs_file_gives_the_same_inventory_as_the_state_file(tmp_path, inventory):
    value = fleet_value()
    write_json(tmp_path / "terraform.tfstate", state_doc({"fleet": value}))
    write_json(tmp_path / "outputs.json", outputs_doc({"other": "x", "fleet": value}))
    from_state = inventory(write_source(tmp_path, "state_file: terraform.tfstate\n",
                                        name="a.aegis_fleet.yml"))
    from_outputs = inventory(write_source(tmp_path, f"outputs_file: {tmp_path}/outputs.json\n",
                                          name="b.aegis_fleet.yaml"))
    assert from_outputs == from_state
    assert hosts_of(from_outputs, "aegis_fleet") == ["node1", "node2"]


def test_output_name_and_exact_source_name(tmp_path, inventory):
    write_json(tmp_path / "outputs.json", outputs_doc({"lab": fleet_value(prefix="aegis")}))
    inv = inventory(write_source(tmp_path, "outputs_file: outputs.json\noutput_name: lab\n",
                                 name="aegis_fleet.yml"))
    assert hosts_of(inv, "aegis_aegis") == ["node1", "node2"]
    assert unwrap(inv["_meta"]["hostvars"]["node1"]["aegis_fleet_prefix"]) == "aegis"


def test_prefix_group_name_is_sanitised(tmp_path, inventory):
    write_json(tmp_path / "terraform.tfstate", state_doc({"fleet": fleet_value(prefix="ci-7.x")}))
    inv = inventory(write_source(tmp_path, "state_file: terraform.tfstate\n"))
    assert hosts_of(inv, "aegis_ci_7_x") == ["node1", "node2"]


def test_known_hosts_path_with_a_space_is_quoted_for_ssh(tmp_path, inventory):
    value = fleet_value()
    value["known_hosts"] = "/abs/my path/known_hosts"
    write_json(tmp_path / "terraform.tfstate", state_doc({"fleet": value}))
    inv = inventory(write_source(tmp_path, "state_file: terraform.tfstate\n"))
    args = unwrap(inv["_meta"]["hostvars"]["node1"]["ansible_ssh_common_args"])
    assert args.startswith("-o 'UserKnownHostsFile=/abs/my path/known_hosts' ")


def test_podman_connection_uses_the_container_not_the_network(tmp_path, inventory):
    value = fleet_value()
    for key in ("ssh_user", "ssh_private_key", "known_hosts"):  # not needed for podman
        del value[key]
    write_json(tmp_path / "terraform.tfstate", state_doc({"fleet": value}))
    inv = inventory(write_source(tmp_path, "state_file: terraform.tfstate\nconnection: podman\n"))
    hostvars = unwrap(inv["_meta"]["hostvars"])
    assert hostvars["node2"] == {
        "aegis_node_address": "10.213.7.11",
        "aegis_node_container": "at1a2b-node2",
        "aegis_node_slot": 1,
        "aegis_fleet_prefix": "at1a2b",
        "ansible_connection": "containers.podman.podman",
        "ansible_host": "at1a2b-node2",
    }
    assert hosts_of(inv, "aegis_fleet") == ["node1", "node2"]


def test_constructed_keyed_groups_compose_and_groups(tmp_path, inventory):
    write_json(tmp_path / "terraform.tfstate", state_doc({"fleet": fleet_value()}))
    inv = inventory(write_source(tmp_path, (
        "state_file: terraform.tfstate\n"
        "strict: true\n"
        "keyed_groups:\n"
        "  - key: aegis_node_slot | string\n"  # slot 0 is falsy: keyed_groups would skip it
        "    prefix: slot\n"
        "  - key: aegis_fleet_prefix\n"
        "    prefix: fleet\n"
        "compose:\n"
        "  aegis_last_octet: aegis_node_address.split('.')[-1] | int\n"
        "groups:\n"
        "  canary: aegis_node_slot == 0\n"
    )))
    assert hosts_of(inv, "slot_0") == ["node1"]
    assert hosts_of(inv, "slot_1") == ["node2"]
    assert hosts_of(inv, "fleet_at1a2b") == ["node1", "node2"]
    assert hosts_of(inv, "canary") == ["node1"]
    assert inv["_meta"]["hostvars"]["node2"]["aegis_last_octet"] == 11


def test_empty_fleet_is_an_empty_inventory(tmp_path, inventory):
    write_json(tmp_path / "terraform.tfstate", state_doc({"fleet": fleet_value(nodes={})}))
    inv = inventory(write_source(tmp_path, "state_file: terraform.tfstate\n"))
    assert inv["_meta"]["hostvars"] == {}


def test_other_file_names_are_left_to_other_plugins(tmp_path, run):
    write_json(tmp_path / "terraform.tfstate", state_doc({"fleet": fleet_value()}))
    source = write_source(tmp_path, "state_file: terraform.tfstate\n", name="fleet.yml")
    proc = run(ANSIBLE_INVENTORY, "-i", str(source), "--list")
    assert proc.returncode != 0
    assert "Completely failed to parse inventory source" in proc.stderr
    assert "aegis.fleet.fleet:" not in proc.stderr  # declined in verify_file, never parsed


def test_ansible_doc_renders(run):
    proc = run(ANSIBLE_DOC, "-t", "inventory", "--json", "aegis.fleet.fleet")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)["aegis.fleet.fleet"]
    options = doc["doc"]["options"]
    assert {"plugin", "state_file", "outputs_file", "output_name", "connection",
            "compose", "groups", "keyed_groups", "strict"} <= set(options)
    assert options["connection"]["choices"] == ["ssh", "podman"]
    assert doc["examples"]


# -- errors -------------------------------------------------------------------------------

def test_both_files_is_an_error_naming_the_options(tmp_path, inventory_error):
    write_json(tmp_path / "terraform.tfstate", state_doc({"fleet": fleet_value()}))
    write_json(tmp_path / "outputs.json", outputs_doc({"fleet": fleet_value()}))
    err = inventory_error(write_source(
        tmp_path, "state_file: terraform.tfstate\noutputs_file: outputs.json\n"))
    assert "set exactly one of 'state_file'" in err
    assert "'outputs_file'" in err
    assert "both are set" in err


def test_neither_file_is_an_error_naming_the_options(tmp_path, inventory_error):
    err = inventory_error(write_source(tmp_path, "connection: ssh\n"))
    assert "set exactly one of 'state_file'" in err
    assert "'outputs_file'" in err
    assert "neither is set" in err


def test_missing_state_file_says_to_apply_first(tmp_path, inventory_error):
    err = inventory_error(write_source(tmp_path, "state_file: missing/terraform.tfstate\n"))
    assert f"state_file {tmp_path}/missing/terraform.tfstate does not exist" in err
    assert "run `terraform apply` for the fleet first" in err


def test_missing_outputs_file_says_how_to_write_it(tmp_path, inventory_error):
    err = inventory_error(write_source(tmp_path, "outputs_file: out.json\n"))
    assert f"outputs_file {tmp_path}/out.json does not exist" in err
    assert f"`terraform output -json > {tmp_path}/out.json`" in err


def test_unreadable_json_is_an_error(tmp_path, inventory_error):
    (tmp_path / "terraform.tfstate").write_text('{"version": 4, "outputs": {')
    err = inventory_error(write_source(tmp_path, "state_file: terraform.tfstate\n"))
    assert f"state_file {tmp_path}/terraform.tfstate is not valid JSON" in err
    assert "line 1 column" in err
    assert "terraform apply" in err


def test_state_without_the_output_says_to_apply_first(tmp_path, inventory_error):
    write_json(tmp_path / "terraform.tfstate", state_doc({}))  # before the first apply
    err = inventory_error(write_source(tmp_path, "state_file: terraform.tfstate\n"))
    assert "has no Terraform output 'fleet' (outputs present: none)" in err
    assert "run `terraform apply` for the fleet first" in err


def test_missing_named_output_lists_the_outputs_there_are(tmp_path, inventory_error):
    write_json(tmp_path / "outputs.json", outputs_doc({"fleet": fleet_value(), "extra": 1}))
    err = inventory_error(write_source(tmp_path, "outputs_file: outputs.json\noutput_name: lab\n"))
    assert "has no Terraform output 'lab' (outputs present: 'extra', 'fleet')" in err
    assert "set 'output_name'" in err


def test_outputs_json_given_as_state_file_says_which_option_to_use(tmp_path, inventory_error):
    write_json(tmp_path / "outputs.json", outputs_doc({"fleet": fleet_value()}))
    err = inventory_error(write_source(tmp_path, "state_file: outputs.json\n"))
    assert "looks like the output of `terraform output -json`" in err
    assert f"set 'outputs_file: {tmp_path}/outputs.json'" in err


def test_state_given_as_outputs_file_says_which_option_to_use(tmp_path, inventory_error):
    write_json(tmp_path / "terraform.tfstate", state_doc({"fleet": fleet_value()}))
    err = inventory_error(write_source(tmp_path, "outputs_file: terraform.tfstate\n"))
    assert "looks like a Terraform state file" in err
    assert f"set 'state_file: {tmp_path}/terraform.tfstate'" in err


def test_fleet_without_ssh_settings_is_an_error_for_ssh(tmp_path, inventory_error):
    value = fleet_value()
    del value["known_hosts"]
    write_json(tmp_path / "terraform.tfstate", state_doc({"fleet": value}))
    err = inventory_error(write_source(tmp_path, "state_file: terraform.tfstate\n"))
    assert f"output 'fleet' of {tmp_path}/terraform.tfstate lacks the key(s) 'known_hosts'" in err
    assert "terraform apply" in err


def test_node_missing_keys_is_an_error_naming_node_and_keys(tmp_path, inventory_error):
    nodes = {"node1": {"mac": "02:ae:0a:d5:07:0a", "slot": 0}}
    write_json(tmp_path / "terraform.tfstate", state_doc({"fleet": fleet_value(nodes=nodes)}))
    err = inventory_error(write_source(tmp_path, "state_file: terraform.tfstate\n"))
    assert "node 'node1' in output 'fleet'" in err
    assert "lacks the key(s) 'address', 'container'" in err
    assert f"{tmp_path}/terraform.tfstate" in err
    assert "terraform apply" in err


def test_node_with_a_bad_address_is_an_error(tmp_path, inventory_error):
    nodes = {"node1": {"address": "10.213.7.300", "container": "c", "slot": 0}}
    write_json(tmp_path / "terraform.tfstate", state_doc({"fleet": fleet_value(nodes=nodes)}))
    err = inventory_error(write_source(tmp_path, "state_file: terraform.tfstate\n"))
    assert "node 'node1'" in err
    assert "has address '10.213.7.300', which is not an IP address" in err


@pytest.mark.parametrize("name", ["node 1", "web[1]", "db:5432", "-node", "node-", "a" * 64, ""])
def test_node_name_that_is_not_a_host_name_is_an_error(tmp_path, inventory_error, name):
    nodes = {name: {"address": "10.213.7.10", "container": "c", "slot": 0}}
    write_json(tmp_path / "terraform.tfstate", state_doc({"fleet": fleet_value(nodes=nodes)}))
    err = inventory_error(write_source(tmp_path, "state_file: terraform.tfstate\n"))
    assert f"node name {name!r} in output 'fleet' of {tmp_path}/terraform.tfstate" in err
    assert "is not a valid Ansible host name" in err
    assert "rename the node in the Terraform variable 'nodes'" in err
