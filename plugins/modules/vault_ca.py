#!/usr/bin/python
# Copyright: Aegis contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: vault_ca
short_description: The CA of an SSH or PKI secrets engine on a Vault or OpenBao server
version_added: 0.1.0
description:
  - With O(kind=ssh), has the C(ssh) engine at O(mount) generate its signing key
    (C(MOUNT/config/ca)) if it has none.
  - With O(kind=pki), has the C(pki) engine at O(mount) generate a root CA inside the server
    (C(MOUNT/root/generate/internal)) if it has no issuer yet.
  - An existing key or issuer is never replaced or rotated; the private key never leaves the
    server. Returns the public part (SSH public key, or the CA certificate).
options:
  mount:
    description:
      - Path of the C(ssh) or C(pki) secrets engine.
    type: str
    required: true
  kind:
    description:
      - Which engine the mount is.
    type: str
    choices: [ssh, pki]
    required: true
  key_type:
    description:
      - Key type. For C(ssh) C(ssh-ed25519), C(ssh-rsa) or C(ecdsa-sha2-nistp256); for C(pki)
        C(ec), C(rsa) or C(ed25519).
    type: str
    default: ed25519
  common_name:
    description:
      - Common name of the root CA (O(kind=pki) only).
    type: str
    default: Aegis root CA
  ttl:
    description:
      - Lifetime of the root CA certificate (O(kind=pki) only); the mount's C(max_lease_ttl)
        must allow it.
    type: str
    default: 87600h
extends_documentation_fragment:
  - aegis.fleet.vault
attributes:
  check_mode:
    support: full
    description: Reports whether a key or root CA would be generated; generates nothing.
  diff_mode:
    support: full
    description: Shows whether the CA exists before and after (public key fingerprint only).
author:
  - Aegis contributors (@aegis)
"""

EXAMPLES = r"""
- name: SSH user CA
  aegis.fleet.vault_ca:
    mount: aegis-ssh
    kind: ssh
    key_type: ssh-ed25519

- name: Root CA of the fleet's PKI
  aegis.fleet.vault_ca:
    mount: aegis-pki
    kind: pki
    common_name: Aegis fleet root CA
    ttl: 87600h
"""

RETURN = r"""
public_key:
  description: The SSH CA's public key (O(kind=ssh)); empty in check mode before it exists.
  returned: when O(kind=ssh)
  type: str
  sample: ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIO0Q7pv4fzPw0PJEVhsMSdEJTL7ttm0ByB05xxSnRJpY
certificate:
  description: The PEM root CA certificate (O(kind=pki)); empty in check mode before it exists.
  returned: when O(kind=pki)
  type: str
  sample: "-----BEGIN CERTIFICATE-----\n..."
"""

import hashlib

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.aegis.fleet.plugins.module_utils.changes import report
from ansible_collections.aegis.fleet.plugins.module_utils.vault_client import (
    Vault,
    argument_spec,
    seconds,
)

ARGUMENT_SPEC = argument_spec(
    mount=dict(type="str", required=True),
    kind=dict(type="str", choices=["ssh", "pki"], required=True),
    key_type=dict(type="str", default="ed25519"),
    common_name=dict(type="str", default="Aegis root CA"),
    ttl=dict(type="str", default="87600h"),
)
SSH_KEY_TYPES = {"ed25519": "ssh-ed25519", "ssh-ed25519": "ssh-ed25519", "rsa": "ssh-rsa",
                 "ssh-rsa": "ssh-rsa", "ec": "ecdsa-sha2-nistp256",
                 "ecdsa-sha2-nistp256": "ecdsa-sha2-nistp256"}
PKI_KEY_TYPES = {"ed25519": "ed25519", "ssh-ed25519": "ed25519", "ec": "ec", "rsa": "rsa"}


def _ssh_key(vault, mount):
    # "no key yet" is a 400 from the engine
    answer = vault.answer_or_none("read %s/config/ca" % mount, vault.client.read,
                                  "%s/config/ca" % mount,
                                  none_on=("InvalidRequest", "InvalidPath"))
    return ((answer or {}).get("data") or {}).get("public_key", "").strip()


def _pki_cert(vault, mount):
    issuers = vault.list("%s/issuers" % mount)
    if not issuers:
        return ""
    data = vault.read("%s/issuer/default" % mount) or {}
    return (data.get("certificate") or "").strip()


def _state(public):
    if not public:
        return ""
    return "CA present (sha256 %s)\n" % hashlib.sha256(public.encode()).hexdigest()[:16]


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    p = module.params
    mount, kind = p["mount"].strip("/"), p["kind"]
    types = SSH_KEY_TYPES if kind == "ssh" else PKI_KEY_TYPES
    if p["key_type"] not in types:
        module.fail_json(msg="key_type %r is not one of %s for kind=%s"
                         % (p["key_type"], ", ".join(sorted(types)), kind))
    try:
        ttl = seconds(p["ttl"], "ttl")
    except ValueError as err:
        module.fail_json(msg=str(err))
    vault = Vault(module)
    public = ""
    if vault.require_mount(mount, kind):
        public = _ssh_key(vault, mount) if kind == "ssh" else _pki_cert(vault, mount)
    before = _state(public)
    if not public:
        if module.check_mode:
            after = "CA present (to be generated)\n"
        elif kind == "ssh":
            vault.write("%s/config/ca" % mount, {"generate_signing_key": True,
                                                 "key_type": types[p["key_type"]]})
            public = _ssh_key(vault, mount)
        else:
            answer = vault.write("%s/root/generate/internal" % mount,
                                 {"common_name": p["common_name"], "ttl": "%ds" % ttl,
                                  "key_type": types[p["key_type"]]}) or {}
            public = ((answer.get("data") or {}).get("certificate") or "").strip()
    if public:
        after = _state(public)
    result = {"public_key": public} if kind == "ssh" else {"certificate": public}
    report(module, before, after, "%s CA at %s" % (kind, mount), **result)


if __name__ == "__main__":
    main()
