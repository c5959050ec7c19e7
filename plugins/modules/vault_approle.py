#!/usr/bin/python
# Copyright: Aegis contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: vault_approle
short_description: An AppRole on a Vault or OpenBao server, with single-use secret_ids
version_added: 0.1.0
description:
  - Creates or updates the AppRole O(name) under the AppRole auth mount O(mount)
    (C(auth/MOUNT/role/NAME)), or removes it.
  - Every policy in O(token_policies) must exist on the server (C(default) and C(root)
    aside); an unknown one is an error naming it, and nothing is changed.
  - Returns the role's C(role_id), which is an identifier, not a secret. This module never
    creates a secret_id.
options:
  name:
    description:
      - Name of the AppRole.
    type: str
    required: true
  mount:
    description:
      - Path of the AppRole auth method.
    type: str
    default: approle
  token_policies:
    description:
      - Policies of the tokens a login gets.
    type: list
    elements: str
    default: []
  secret_id_num_uses:
    description:
      - Logins a secret_id allows (C(1) - each secret_id is single use; C(0) is unlimited).
    type: int
    default: 1
  secret_id_ttl:
    description:
      - Lifetime of a secret_id (seconds or a duration such as C(10m)).
    type: str
    default: 10m
  token_ttl:
    description:
      - TTL of a login's token (seconds or a duration).
    type: str
    default: 15m
  token_max_ttl:
    description:
      - Longest a login's token may be renewed to (seconds or a duration).
    type: str
    default: 1h
  token_bound_cidrs:
    description:
      - Addresses or CIDR blocks the token may be used from; empty allows any.
    type: list
    elements: str
    default: []
  secret_id_bound_cidrs:
    description:
      - Addresses or CIDR blocks a secret_id may be used from; empty allows any.
    type: list
    elements: str
    default: []
  token_no_default_policy:
    description:
      - Leave the C(default) policy off the login's token.
    type: bool
    default: false
  state:
    description:
      - Whether the AppRole exists.
    type: str
    choices: [present, absent]
    default: present
extends_documentation_fragment:
  - aegis.fleet.vault
attributes:
  check_mode:
    support: full
    description: Reports whether the AppRole would change; writes nothing.
  diff_mode:
    support: full
    description: Shows the AppRole's settings before and after (no secret is part of them).
author:
  - Aegis contributors (@aegis)
"""

EXAMPLES = r"""
- name: AppRole for the web nodes
  aegis.fleet.vault_approle:
    name: aegis-web
    token_policies: [aegis-node-web]
    secret_id_num_uses: 1
    secret_id_ttl: 5m
    token_ttl: 15m
    token_max_ttl: 1h
    token_bound_cidrs: [10.213.0.10/32, 10.213.0.11/32]
    secret_id_bound_cidrs: [10.213.0.10/32, 10.213.0.11/32]
"""

RETURN = r"""
name:
  description: The AppRole's name.
  returned: always
  type: str
  sample: aegis-web
role_id:
  description: The AppRole's role_id (an identifier, not a secret); empty in check mode for a
    role still to be made, and after O(state=absent).
  returned: always
  type: str
  sample: 7c2bbd3a-3b0a-2d1c-8a6b-2f3b9c1e0d44
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.aegis.fleet.plugins.module_utils.changes import report
from ansible_collections.aegis.fleet.plugins.module_utils.vault_client import (
    Vault,
    argument_spec,
    as_text,
    cidrs,
    durations,
)

ARGUMENT_SPEC = argument_spec(
    name=dict(type="str", required=True),
    mount=dict(type="str", default="approle"),
    token_policies=dict(type="list", no_log=False, elements="str", default=[]),
    secret_id_num_uses=dict(type="int", no_log=False, default=1),
    secret_id_ttl=dict(type="str", no_log=False, default="10m"),
    token_ttl=dict(type="str", no_log=False, default="15m"),
    token_max_ttl=dict(type="str", no_log=False, default="1h"),
    token_bound_cidrs=dict(type="list", no_log=False, elements="str", default=[]),
    secret_id_bound_cidrs=dict(type="list", no_log=False, elements="str", default=[]),
    token_no_default_policy=dict(type="bool", default=False),
    state=dict(type="str", choices=["present", "absent"], default="present"),
)
FIELDS = ("token_policies", "secret_id_num_uses", "secret_id_ttl", "token_ttl", "token_max_ttl",
          "token_bound_cidrs", "secret_id_bound_cidrs", "token_no_default_policy")


def _state(data):
    return {
        "token_policies": sorted(data.get("token_policies") or []),
        "secret_id_num_uses": int(data.get("secret_id_num_uses") or 0),
        "secret_id_ttl": int(data.get("secret_id_ttl") or 0),
        "token_ttl": int(data.get("token_ttl") or 0),
        "token_max_ttl": int(data.get("token_max_ttl") or 0),
        "token_bound_cidrs": cidrs(data.get("token_bound_cidrs")),
        "secret_id_bound_cidrs": cidrs(data.get("secret_id_bound_cidrs")),
        "token_no_default_policy": bool(data.get("token_no_default_policy")),
    }


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    p = module.params
    ttl = durations(module, ["secret_id_ttl", "token_ttl", "token_max_ttl"])
    if p["secret_id_num_uses"] < 0:
        module.fail_json(msg="secret_id_num_uses must be 0 (unlimited) or more")
    if ttl["token_max_ttl"] and ttl["token_ttl"] > ttl["token_max_ttl"]:
        module.fail_json(msg="token_ttl (%ss) is longer than token_max_ttl (%ss)"
                         % (ttl["token_ttl"], ttl["token_max_ttl"]))
    wanted = dict(p, **ttl)
    try:
        for option in ("token_bound_cidrs", "secret_id_bound_cidrs"):
            wanted[option] = cidrs(p[option], option)
    except ValueError as err:
        module.fail_json(msg=str(err))
    vault = Vault(module)
    if p["state"] == "present":
        vault.require_policies(p["token_policies"], "token_policies")
    mount = p["mount"].strip("/")
    exists = vault.require_mount(mount, "approle", "auth") if p["state"] == "present" else True
    path = "auth/%s/role/%s" % (mount, p["name"])
    current = vault.read(path) if exists else None
    before = _state(current) if current is not None else None
    after = _state(wanted) if p["state"] == "present" else None
    if before != after and not module.check_mode:
        if after is None:
            vault.delete(path)
        else:
            vault.write(path, {k: after[k] for k in FIELDS})
    role_id = ""
    if after is not None and (current is not None or not module.check_mode):
        role_id = (vault.read(path + "/role-id") or {}).get("role_id", "")
    report(module, as_text(before), as_text(after), path, name=p["name"], role_id=role_id)


if __name__ == "__main__":
    main()
