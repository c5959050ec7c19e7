#!/usr/bin/python
# Copyright: Aegis contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: vault_mount
short_description: A secrets engine or auth method mounted on a Vault or OpenBao server
version_added: 0.1.0
description:
  - Enables the secrets engine (C(sys/mounts)) or auth method (C(sys/auth)) O(engine) at
    O(path), and tunes its description and lease TTLs.
  - Never disables a mount and never re-mounts one. A mount of another engine at O(path), or
    one with other O(options), is an error naming both; nothing is changed.
options:
  path:
    description:
      - Where the engine is mounted, without slashes around it, for example C(aegis-kv).
    type: str
    required: true
  engine:
    description:
      - Engine type, for example C(kv), C(database), C(ssh), C(pki) (secrets) or C(approle) (auth).
    type: str
    required: true
  kind:
    description:
      - C(secret) for a secrets engine, C(auth) for an auth method.
    type: str
    choices: [secret, auth]
    default: secret
  description:
    description:
      - Description of the mount.
    type: str
    default: ""
  options:
    description:
      - Engine options set when it is mounted, for example C(version=2) for KV version 2.
    type: dict
    default: {}
  default_lease_ttl:
    description:
      - Default lease TTL (seconds or a duration such as C(1h)); C(0) uses the server's.
    type: str
    default: "0"
  max_lease_ttl:
    description:
      - Maximum lease TTL (seconds or a duration such as C(8760h)); C(0) uses the server's.
    type: str
    default: "0"
extends_documentation_fragment:
  - aegis.fleet.vault
attributes:
  check_mode:
    support: full
    description: Reports whether the mount would be created or tuned; writes nothing.
  diff_mode:
    support: full
    description: Shows the mount's type, options, description and TTLs before and after.
author:
  - Aegis contributors (@aegis)
"""

EXAMPLES = r"""
- name: KV version 2 for the nodes' static secrets
  aegis.fleet.vault_mount:
    path: aegis-kv
    engine: kv
    options:
      version: "2"

- name: AppRole logins for the nodes
  aegis.fleet.vault_mount:
    path: approle
    engine: approle
    kind: auth
"""

RETURN = r"""
path:
  description: The mount path.
  returned: always
  type: str
  sample: aegis-kv
accessor:
  description: The mount's accessor (empty in check mode for a mount still to be made).
  returned: always
  type: str
  sample: kv_9e6d602e
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.aegis.fleet.plugins.module_utils.changes import report
from ansible_collections.aegis.fleet.plugins.module_utils.vault_client import (
    Vault,
    argument_spec,
    as_text,
    durations,
)

ARGUMENT_SPEC = argument_spec(
    path=dict(type="str", required=True),
    engine=dict(type="str", required=True),
    kind=dict(type="str", choices=["secret", "auth"], default="secret"),
    description=dict(type="str", default=""),
    options=dict(type="dict", default={}),
    default_lease_ttl=dict(type="str", default="0"),
    max_lease_ttl=dict(type="str", default="0"),
)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    p = module.params
    path = p["path"].strip("/")
    if not path:
        module.fail_json(msg="path is empty")
    ttl = durations(module, ["default_lease_ttl", "max_lease_ttl"])
    options = {k: str(v) for k, v in p["options"].items()}
    vault = Vault(module)
    base = "sys/mounts" if p["kind"] == "secret" else "sys/auth"
    mounted = (vault.read(base) or {}).get(path + "/")
    before = None
    if mounted:
        before = {"type": mounted.get("type"), "description": mounted.get("description", ""),
                  "options": {k: str(v) for k, v in (mounted.get("options") or {}).items()},
                  "default_lease_ttl": (mounted.get("config") or {}).get("default_lease_ttl", 0),
                  "max_lease_ttl": (mounted.get("config") or {}).get("max_lease_ttl", 0)}
        if before["type"] != p["engine"]:
            module.fail_json(msg="%s/%s is already a %s mount, not %s: choose another path; "
                             "nothing was changed" % (base, path, before["type"], p["engine"]))
        wanted = {k: v for k, v in options.items() if before["options"].get(k) != v}
        if wanted:
            module.fail_json(msg="%s/%s exists with options %s, not %s: change them by hand "
                             "(this module never re-mounts); nothing was changed"
                             % (base, path, before["options"], options))
    after = {"type": p["engine"], "description": p["description"],
             "options": dict(before["options"]) if before else options, **ttl}
    if before != after and not module.check_mode:
        config = {"default_lease_ttl": ttl["default_lease_ttl"],
                  "max_lease_ttl": ttl["max_lease_ttl"]}
        if before is None:
            vault.write("%s/%s" % (base, path), {"type": p["engine"], "options": options,
                                                 "description": p["description"],
                                                 "config": config})
        else:
            vault.write("%s/%s/tune" % (base, path),
                        dict(config, description=p["description"]))
    accessor = (mounted or {}).get("accessor", "")
    if not accessor and not module.check_mode:
        accessor = ((vault.read(base) or {}).get(path + "/") or {}).get("accessor", "")
    report(module, as_text(before), as_text(after), "%s/%s" % (base, path), path=path,
           accessor=accessor)


if __name__ == "__main__":
    main()
