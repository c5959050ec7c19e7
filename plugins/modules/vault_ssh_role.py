#!/usr/bin/python
# Copyright: Aegis contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: vault_ssh_role
short_description: A user-certificate signing role of an SSH secrets engine on Vault or OpenBao
version_added: 0.1.0
description:
  - Creates or updates the role O(name) of the C(ssh) engine at O(mount)
    (C(MOUNT/roles/NAME)) as a CA role that signs user certificates only
    (C(key_type=ca), C(allow_user_certificates=true), C(allow_host_certificates=false)).
  - The engine must be mounted and have its signing key (M(aegis.fleet.vault_ca)); the module
    does not generate or change the key.
  - The role is written only when what the server holds differs from the options, so a second
    run changes nothing.
options:
  mount:
    description:
      - Path of the C(ssh) secrets engine.
    type: str
    required: true
  name:
    description:
      - Name of the role (the signing path is C(MOUNT/sign/NAME)).
    type: str
    required: true
  allowed_users:
    description:
      - Principals the role may sign for; C(*) allows any (the caller, e.g. the Aegis
        controller, then decides whose name goes into a certificate).
    type: list
    elements: str
    default: ["*"]
  allow_user_key_ids:
    description:
      - Let the caller choose the certificate's key ID (the Aegis controller sets
        C(NAME@aegis-access/REQUEST_ID), which sshd logs for each login).
    type: bool
    default: true
  allowed_extensions:
    description:
      - Certificate extensions a caller may ask for.
    type: list
    elements: str
    default: [permit-pty, permit-port-forwarding]
  default_extensions:
    description:
      - Extensions given when the caller asks for none.
    type: dict
    default: {}
  ttl:
    description:
      - Validity of a certificate when the caller asks for none (seconds or a duration such
        as C(10m)).
    type: str
    default: 10m
  max_ttl:
    description:
      - Longest validity a caller may ask for.
    type: str
    default: 24h
extends_documentation_fragment:
  - aegis.fleet.vault
attributes:
  check_mode:
    support: full
    description: Reports whether the role would be created or changed; writes nothing.
  diff_mode:
    support: full
    description: Shows the role's settings before and after.
author:
  - Aegis contributors (@aegis)
"""

EXAMPLES = r"""
- name: The role the Aegis controller signs SSH grants' certificates with
  aegis.fleet.vault_ssh_role:
    mount: aegis-ssh
    name: aegis-access
    allowed_users: ["*"]
    ttl: 10m
    max_ttl: 24h
"""

RETURN = r"""
role:
  description: The role's settings after the run (as the module compares them).
  returned: always
  type: dict
  sample:
    key_type: ca
    allow_user_certificates: true
    allow_host_certificates: false
    allow_user_key_ids: true
    allowed_users: "*"
    allowed_extensions: permit-pty,permit-port-forwarding
    default_extensions: {}
    ttl: 600
    max_ttl: 86400
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
    mount=dict(type="str", required=True),
    name=dict(type="str", required=True),
    allowed_users=dict(type="list", elements="str", default=["*"]),
    allow_user_key_ids=dict(type="bool", default=True),
    allowed_extensions=dict(type="list", elements="str",
                            default=["permit-pty", "permit-port-forwarding"]),
    default_extensions=dict(type="dict", default={}),
    ttl=dict(type="str", default="10m"),
    max_ttl=dict(type="str", default="24h"),
)


def _joined(values):
    return ",".join(v.strip() for v in values if v.strip())


def _state(data):
    """The settings this module manages, as the server answers them."""
    return {"key_type": data.get("key_type"),
            "allow_user_certificates": bool(data.get("allow_user_certificates")),
            "allow_host_certificates": bool(data.get("allow_host_certificates")),
            "allow_user_key_ids": bool(data.get("allow_user_key_ids")),
            "allowed_users": data.get("allowed_users") or "",
            "allowed_extensions": data.get("allowed_extensions") or "",
            "default_extensions": dict(data.get("default_extensions") or {}),
            "ttl": int(data.get("ttl") or 0),
            "max_ttl": int(data.get("max_ttl") or 0)}


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    p = module.params
    ttls = durations(module, ["ttl", "max_ttl"])
    if ttls["max_ttl"] and ttls["ttl"] > ttls["max_ttl"]:
        module.fail_json(msg="ttl %s is longer than max_ttl %s; shorten ttl or raise max_ttl"
                         % (p["ttl"], p["max_ttl"]))
    users = _joined(p["allowed_users"])
    if not users:
        module.fail_json(msg="allowed_users is empty: name the principals the role may sign "
                         "for, or ['*'] to leave the choice to the caller")
    wanted = {"key_type": "ca", "allow_user_certificates": True,
              "allow_host_certificates": False, "allow_user_key_ids": p["allow_user_key_ids"],
              "allowed_users": users, "allowed_extensions": _joined(p["allowed_extensions"]),
              "default_extensions": {str(k): str(v)
                                     for k, v in p["default_extensions"].items()},
              "ttl": ttls["ttl"], "max_ttl": ttls["max_ttl"]}
    mount = p["mount"].strip("/")
    vault = Vault(module)
    current = None
    if vault.require_mount(mount, "ssh"):
        current = vault.read("%s/roles/%s" % (mount, p["name"]))
    before = _state(current) if current is not None else None
    if before != wanted and not module.check_mode:
        vault.write("%s/roles/%s" % (mount, p["name"]), wanted)
    report(module, as_text(before), as_text(wanted),
           "ssh role %s/roles/%s" % (mount, p["name"]), role=wanted)


if __name__ == "__main__":
    main()
