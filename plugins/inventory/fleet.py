# Copyright: Aegis contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Inventory plugin: the Aegis fleet as Terraform last applied it."""
# Ansible convention: DOCUMENTATION and EXAMPLES come before the imports.

from __future__ import annotations

DOCUMENTATION = r"""
name: fleet
short_description: Aegis fleet inventory from Terraform state or outputs
version_added: 0.1.0
author:
  - Aegis contributors (@aegis)
description:
  - Builds an inventory from the C(fleet) output of the Aegis Terraform root module
    (C(terraform/fleets/local)).
  - Reads either the Terraform state file (O(state_file), the value of C(outputs.<output_name>.value))
    or the JSON written by C(terraform output -json) (O(outputs_file)). The C(terraform) binary is not needed.
  - Hosts are named after the fleet's nodes. Every host is put in the group C(aegis_fleet) and in the group
    C(aegis_<prefix>), where C(<prefix>) is the fleet prefix with every character other than letters, digits and
    C(_) replaced by C(_).
  - Every host gets the variables C(aegis_node_address), C(aegis_node_container), C(aegis_node_slot) and
    C(aegis_fleet_prefix), plus the connection variables chosen by O(connection).
  - The inventory source file name must end in C(.aegis_fleet.yml) or C(.aegis_fleet.yaml),
    or be exactly C(aegis_fleet.yml) or C(aegis_fleet.yaml).
extends_documentation_fragment:
  - ansible.builtin.constructed
options:
  plugin:
    description:
      - The name of this plugin. It must be V(aegis.fleet.fleet) for this plugin to recognise the file as its own.
    type: str
    required: true
    choices: ['aegis.fleet.fleet']
  state_file:
    description:
      - Path to a Terraform state file (C(terraform.tfstate), JSON) of the fleet's root module.
      - The fleet is read from C(outputs.<output_name>.value).
      - A relative path is resolved against the directory of the inventory source file; C(~) is expanded.
      - Exactly one of O(state_file) and O(outputs_file) must be set.
    type: str
  outputs_file:
    description:
      - Path to the JSON written by C(terraform output -json) for the fleet's root module.
      - 'Its top level maps each output name to C({"value": ..., "type": ..., "sensitive": false}); the fleet is read
        from C(<output_name>.value).'
      - A relative path is resolved against the directory of the inventory source file; C(~) is expanded.
      - Exactly one of O(state_file) and O(outputs_file) must be set.
    type: str
  output_name:
    description:
      - Name of the Terraform output that holds the fleet description.
    type: str
    default: fleet
  connection:
    description:
      - How Ansible reaches the nodes.
      - V(ssh) connects to the node's address as the fleet's SSH user with the fleet's private key, checking the
        host key strictly against the fleet's C(known_hosts) file (C(ansible_host), C(ansible_user),
        C(ansible_ssh_private_key_file) and C(ansible_ssh_common_args) are set).
      - V(podman) is the break-glass path that does not use the node's network at all; it sets
        C(ansible_connection=containers.podman.podman) and C(ansible_host) to the node's container name. It needs the
        C(containers.podman) collection and access to the podman instance that runs the nodes.
    type: str
    default: ssh
    choices: ['ssh', 'podman']
notes:
  - The fleet output is a mapping with at least C(prefix) and C(nodes); with O(connection=ssh) also C(ssh_user),
    C(ssh_private_key) and C(known_hosts). Each entry of C(nodes) (keyed by node name) needs C(address), C(container)
    and C(slot). Other keys (C(bridge), C(network), C(gateway), C(mac), ...) are ignored.
  - Node names must be valid Ansible host names here - letters, digits, C(-), C(_) and C(.), starting and ending with
    a letter or digit, at most 63 characters.
  - C(aegis_node_slot) is a number; for O(keyed_groups) use C(aegis_node_slot | string), because a key of V(0) is skipped.
  - Values read from Terraform are data, never templates.
seealso:
  - name: Terraform output command
    description: Writes the JSON that O(outputs_file) reads.
    link: https://developer.hashicorp.com/terraform/cli/commands/output
"""

EXAMPLES = r"""
---
# inventory.aegis_fleet.yml, next to the fleet's state (what aegis-lab writes)
plugin: aegis.fleet.fleet
state_file: terraform.tfstate

---
# From `terraform output -json > fleet-outputs.json`
plugin: aegis.fleet.fleet
outputs_file: fleet-outputs.json

---
# Break-glass: reach the nodes through podman, not through their network
plugin: aegis.fleet.fleet
state_file: /srv/aegis/.state/fleets/aegis/terraform.tfstate
connection: podman

---
# Constructed features: a group per slot and a variable derived from the address
plugin: aegis.fleet.fleet
state_file: terraform.tfstate
keyed_groups:
  # slot is a number and keyed_groups skips a key of 0, so group on its string form
  - key: aegis_node_slot | string
    prefix: slot
compose:
  aegis_last_octet: aegis_node_address.split('.')[-1] | int
groups:
  canary: aegis_node_slot == 0
"""

import ipaddress
import json
import os
import re
import shlex

from ansible.errors import AnsibleParserError
from ansible.plugins.inventory import BaseInventoryPlugin, Constructable

_HOST_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")
_NODE_KEYS = ("address", "container", "slot")
_SSH_KEYS = ("ssh_user", "ssh_private_key", "known_hosts")
_APPLY_HINT = "run `terraform apply` for the fleet first (in the Aegis lab: `aegis-lab fleet up --prefix <prefix>`)"


def _keys(names) -> str:
    return ", ".join(f"'{n}'" for n in names)


class InventoryModule(BaseInventoryPlugin, Constructable):
    """Hosts, groups and connection variables from the Aegis ``fleet`` Terraform output."""

    NAME = "aegis.fleet.fleet"

    def verify_file(self, path):
        """Accept only readable ``*.aegis_fleet.y(a)ml`` / ``aegis_fleet.y(a)ml`` files."""
        if not super().verify_file(path):
            return False
        name = os.path.basename(path)
        if name in ("aegis_fleet.yml", "aegis_fleet.yaml") or name.endswith((".aegis_fleet.yml", ".aegis_fleet.yaml")):
            return True
        self.display.vvv(f"aegis.fleet.fleet: skipping {path}: the file name must end in .aegis_fleet.yml or .aegis_fleet.yaml")
        return False

    def parse(self, inventory, loader, path, cache=True):
        super().parse(inventory, loader, path, cache=cache)
        self._source = path
        self._read_config_data(path)

        kind, data_file = self._data_file()
        fleet = self._load_fleet(kind, data_file)
        self._populate(fleet, data_file)

    # -- reading -------------------------------------------------------------------
    def _fail(self, message):
        raise AnsibleParserError(f"aegis.fleet.fleet: {message} (inventory source {self._source})")

    def _data_file(self):
        state_file = self.get_option("state_file")
        outputs_file = self.get_option("outputs_file")
        if bool(state_file) == bool(outputs_file):
            found = "both are set" if state_file else "neither is set"
            self._fail(
                f"set exactly one of 'state_file' (a Terraform state file, terraform.tfstate) or 'outputs_file' "
                f"(the JSON written by `terraform output -json`); {found}"
            )
        kind, raw = ("state_file", state_file) if state_file else ("outputs_file", outputs_file)
        resolved = os.path.expanduser(str(raw))
        if not os.path.isabs(resolved):
            resolved = os.path.join(os.path.dirname(os.path.abspath(self._source)), resolved)
        return kind, os.path.normpath(resolved)

    def _load_fleet(self, kind, data_file):
        output_name = self.get_option("output_name")
        if kind == "state_file":
            how_to_make = _APPLY_HINT
        else:
            how_to_make = f"{_APPLY_HINT}, then write it with `terraform output -json > {data_file}`"

        if not os.path.exists(data_file):
            self._fail(f"{kind} {data_file} does not exist; {how_to_make}, or point '{kind}' at the right file")
        try:
            with open(data_file, encoding="utf-8") as handle:
                text = handle.read()
        except (OSError, UnicodeDecodeError) as exc:
            self._fail(f"cannot read {kind} {data_file}: {exc}; check the path and its permissions")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            self._fail(
                f"{kind} {data_file} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
                f"it must be the file Terraform wrote, unedited - {how_to_make}"
            )
        if not isinstance(data, dict):
            self._fail(f"{kind} {data_file} holds a JSON {type(data).__name__}, not an object; {how_to_make}")

        if kind == "state_file":
            if "outputs" not in data and isinstance(data.get(output_name), dict) and "value" in data[output_name]:
                self._fail(
                    f"state_file {data_file} looks like the output of `terraform output -json`, not a Terraform "
                    f"state file; set 'outputs_file: {data_file}' instead of 'state_file'"
                )
            outputs = data.get("outputs")
            if not isinstance(outputs, dict):
                self._fail(
                    f"state_file {data_file} is not a Terraform state file (it has no 'outputs' object); "
                    f"point 'state_file' at the fleet's terraform.tfstate"
                )
        else:
            if "outputs" in data and "terraform_version" in data:
                self._fail(
                    f"outputs_file {data_file} looks like a Terraform state file, not the output of "
                    f"`terraform output -json`; set 'state_file: {data_file}' instead of 'outputs_file'"
                )
            outputs = data

        if output_name not in outputs:
            present = _keys(sorted(outputs)) if outputs else "none"
            self._fail(
                f"{kind} {data_file} has no Terraform output '{output_name}' (outputs present: {present}); "
                f"{_APPLY_HINT}, or set 'output_name' to the output that holds the fleet"
            )
        entry = outputs[output_name]
        if not isinstance(entry, dict) or "value" not in entry:
            self._fail(
                f"output '{output_name}' in {kind} {data_file} has no 'value'; the file is damaged or not "
                f"from Terraform - {how_to_make}"
            )
        return entry["value"]

    # -- checking and populating ------------------------------------------------------
    def _populate(self, fleet, data_file):
        output_name = self.get_option("output_name")
        connection = self.get_option("connection")
        where = f"output '{output_name}' of {data_file}"
        fix = "re-run `terraform apply` with the current Aegis fleet module (terraform/fleets/local)"

        if not isinstance(fleet, dict):
            self._fail(f"{where} is a {type(fleet).__name__}, not a fleet description (a mapping with 'prefix' and 'nodes'); {fix}")
        required = ("prefix", "nodes", *(_SSH_KEYS if connection == "ssh" else ()))
        missing = [key for key in required if key not in fleet]
        if missing:
            self._fail(f"{where} lacks the key(s) {_keys(missing)} needed with connection '{connection}'; {fix}")
        prefix = fleet["prefix"]
        if not isinstance(prefix, str) or not prefix:
            self._fail(f"{where} has prefix {prefix!r}; it must be a non-empty string; {fix}")
        nodes = fleet["nodes"]
        if not isinstance(nodes, dict):
            self._fail(f"{where} has 'nodes' of type {type(nodes).__name__}; it must map node names to nodes; {fix}")
        if connection == "ssh":
            for key in _SSH_KEYS:
                if not isinstance(fleet[key], str) or not fleet[key]:
                    self._fail(f"{where} has {key} {fleet[key]!r}; it must be a non-empty string; {fix}")

        checked = {name: self._check_node(name, node, where, fix) for name, node in nodes.items()}

        prefix_group = self.inventory.add_group("aegis_" + re.sub(r"[^A-Za-z0-9_]", "_", prefix))
        fleet_group = self.inventory.add_group("aegis_fleet")
        strict = self.get_option("strict")
        for name, node in checked.items():
            self.inventory.add_host(name, group=fleet_group)
            self.inventory.add_child(prefix_group, name)
            host_vars = {
                "aegis_node_address": node["address"],
                "aegis_node_container": node["container"],
                "aegis_node_slot": node["slot"],
                "aegis_fleet_prefix": prefix,
            }
            if connection == "podman":
                host_vars["ansible_connection"] = "containers.podman.podman"
                host_vars["ansible_host"] = node["container"]
            else:
                host_vars["ansible_host"] = node["address"]
                host_vars["ansible_user"] = fleet["ssh_user"]
                host_vars["ansible_ssh_private_key_file"] = fleet["ssh_private_key"]
                host_vars["ansible_ssh_common_args"] = " ".join([
                    "-o", shlex.quote(f"UserKnownHostsFile={fleet['known_hosts']}"),
                    "-o", "StrictHostKeyChecking=yes",
                    "-o", "IdentitiesOnly=yes",
                ])
            for key, value in host_vars.items():
                self.inventory.set_variable(name, key, value)

            all_vars = self.inventory.get_host(name).get_vars()
            self._set_composite_vars(self.get_option("compose"), all_vars, name, strict=strict)
            self._add_host_to_composed_groups(self.get_option("groups"), all_vars, name, strict=strict)
            self._add_host_to_keyed_groups(self.get_option("keyed_groups"), all_vars, name, strict=strict)

    def _check_node(self, name, node, where, fix):
        if not _HOST_NAME.match(name):
            self._fail(
                f"node name {name!r} in {where} is not a valid Ansible host name (letters, digits, '-', '_' and '.', "
                f"starting and ending with a letter or digit, at most 63 characters); rename the node in the "
                f"Terraform variable 'nodes' and re-run `terraform apply`"
            )
        if not isinstance(node, dict):
            self._fail(f"node {name!r} in {where} is a {type(node).__name__}, not a mapping with {_keys(_NODE_KEYS)}; {fix}")
        missing = [key for key in _NODE_KEYS if key not in node]
        if missing:
            self._fail(f"node {name!r} in {where} lacks the key(s) {_keys(missing)} (every node needs {_keys(_NODE_KEYS)}); {fix}")
        address = node["address"]
        try:
            address = str(ipaddress.ip_address(address)) if isinstance(address, str) else None
        except ValueError:
            address = None
        if address is None:
            self._fail(f"node {name!r} in {where} has address {node['address']!r}, which is not an IP address; {fix}")
        container = node["container"]
        if not isinstance(container, str) or not container:
            self._fail(f"node {name!r} in {where} has container {container!r}; it must be a non-empty string; {fix}")
        slot = node["slot"]
        if isinstance(slot, bool) or not isinstance(slot, int) or slot < 0:
            self._fail(f"node {name!r} in {where} has slot {slot!r}; it must be a whole number >= 0; {fix}")
        return {"address": address, "container": container, "slot": slot}
