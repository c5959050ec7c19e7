#!/usr/bin/python
# Copyright: Aegis contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: vault_policy
short_description: An ACL policy on a Vault or OpenBao server
version_added: 0.1.0
description:
  - Creates, updates or removes the ACL policy O(name) (C(sys/policies/acl/NAME)).
  - Idempotent by comparing the policy text (trailing white space ignored).
options:
  name:
    description:
      - Name of the policy. C(root) and C(default) are refused.
    type: str
    required: true
  policy:
    description:
      - The policy in HCL. Required with O(state=present).
    type: str
  state:
    description:
      - Whether the policy exists.
    type: str
    choices: [present, absent]
    default: present
extends_documentation_fragment:
  - aegis.fleet.vault
attributes:
  check_mode:
    support: full
    description: Reports whether the policy would change; writes nothing.
  diff_mode:
    support: full
    description: Shows the policy text before and after (policies hold no secrets).
author:
  - Aegis contributors (@aegis)
"""

EXAMPLES = r"""
- name: Let web nodes read their static secrets
  aegis.fleet.vault_policy:
    url: https://vault.example.com:8200
    token: "{{ vault_admin_token }}"
    name: aegis-node-web
    policy: |
      path "aegis-kv/data/web/*" {
        capabilities = ["read"]
      }
"""

RETURN = r"""
name:
  description: The policy's name.
  returned: always
  type: str
  sample: aegis-node-web
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.aegis.fleet.plugins.module_utils.changes import report
from ansible_collections.aegis.fleet.plugins.module_utils.vault_client import Vault, argument_spec

ARGUMENT_SPEC = argument_spec(
    name=dict(type="str", required=True),
    policy=dict(type="str"),
    state=dict(type="str", choices=["present", "absent"], default="present"),
)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True,
                           required_if=[("state", "present", ["policy"])])
    name, state = module.params["name"], module.params["state"]
    if name in ("root", "default"):
        module.fail_json(msg="policy %r is built in and is not managed by this module" % name)
    vault = Vault(module)
    path = "sys/policies/acl/%s" % name
    current = vault.read(path)
    before = current["policy"].rstrip() + "\n" if current else ""
    after = module.params["policy"].rstrip() + "\n" if state == "present" else ""
    if before != after and not module.check_mode:
        if state == "present":
            vault.write(path, {"policy": after})
        else:
            vault.delete(path)
    report(module, before, after, "policy %s" % name, name=name)


if __name__ == "__main__":
    main()
