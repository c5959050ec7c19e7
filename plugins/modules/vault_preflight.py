#!/usr/bin/python
# Copyright: Aegis contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: vault_preflight
short_description: Check a Vault or OpenBao server before changing anything on it
version_added: 0.1.0
description:
  - Fails, naming what to fix, when the server does not answer, is not initialized, is
    sealed, refuses the token, or lacks one of the policies in O(policies).
  - Changes nothing; the C(aegis.fleet.vault) role runs it first so that bad input leaves
    the server as it was.
options:
  policies:
    description:
      - ACL policies that must already exist (those the play refers to but does not create).
    type: list
    elements: str
    default: []
  mounts:
    description:
      - Mounts the play will use, as C(PATH=ENGINE), for example C(aegis-kv=kv). A mount that
        exists at PATH with another engine is an error.
    type: list
    elements: str
    default: []
extends_documentation_fragment:
  - aegis.fleet.vault
attributes:
  check_mode:
    support: full
    description: Runs the same checks; it never changes anything.
  diff_mode:
    support: none
    description: It changes nothing, so there is nothing to show.
author:
  - Aegis contributors (@aegis)
"""

EXAMPLES = r"""
- name: Stop early when the server is sealed or a referenced policy is missing
  aegis.fleet.vault_preflight:
    url: https://vault.example.com:8200
    policies: [ops-readonly]
    mounts: [aegis-kv=kv, aegis-db=database]
"""

RETURN = r"""
version:
  description: The server's version.
  returned: always
  type: str
  sample: 2.7.2
policies:
  description: The ACL policies on the server.
  returned: always
  type: list
  elements: str
  sample: [default, root]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.aegis.fleet.plugins.module_utils.vault_client import Vault, argument_spec

ARGUMENT_SPEC = argument_spec(
    policies=dict(type="list", elements="str", default=[]),
    mounts=dict(type="list", elements="str", default=[]),
)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    wanted = {}
    for item in module.params["mounts"]:
        path, sep, engine = item.partition("=")
        if not sep or not path.strip("/") or not engine:
            module.fail_json(msg="mounts: %r is not PATH=ENGINE" % item)
        wanted[path.strip("/")] = engine
    vault = Vault(module)
    missing = vault.missing_policies(module.params["policies"])
    if missing:
        module.fail_json(msg="policy not found on %s: %s; create it first (aegis.fleet.vault_policy) "
                         "or stop referring to it (a node role's policies). Nothing was changed"
                         % (vault.url, ", ".join(missing)))
    mounts = vault.read("sys/mounts") or {}
    clashes = ["%s is a %s mount, not %s" % (path, mounts[path + "/"].get("type"), engine)
               for path, engine in sorted(wanted.items())
               if path + "/" in mounts and mounts[path + "/"].get("type") != engine]
    if clashes:
        module.fail_json(msg="mount paths already in use: %s; choose other paths. Nothing was "
                         "changed" % "; ".join(clashes))
    module.exit_json(changed=False, version=vault.version,
                     policies=sorted(vault.list("sys/policies/acl")))


if __name__ == "__main__":
    main()
