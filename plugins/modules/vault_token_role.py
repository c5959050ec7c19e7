#!/usr/bin/python
# Copyright: Aegis contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: vault_token_role
short_description: A token role on a Vault or OpenBao server, and optionally a token of it in a file
version_added: 0.1.0
description:
  - Creates or updates the token role O(name) (C(auth/token/roles/NAME)).
  - With O(token_file), also keeps one valid token of this role in that file on the host the
    module runs on (mode C(0600), written atomically). A new token is created only when the
    file is missing or holds a token that is no longer valid, was not made from this role, or
    has other policies than the role gives; a replaced token that is still valid is revoked.
  - The token is never logged, shown in a diff or returned; only its accessor is returned.
  - Every policy in O(allowed_policies) must exist on the server; an unknown one is an error
    naming it, and nothing is changed.
options:
  name:
    description:
      - Name of the token role.
    type: str
    required: true
  allowed_policies:
    description:
      - The policies of the role's tokens.
    type: list
    elements: str
    required: true
  period:
    description:
      - Period of the role's tokens (seconds or a duration such as C(24h)); a periodic token
        does not expire as long as it is renewed within each period. C(0) makes ordinary
        tokens with the mount's TTLs.
    type: str
    default: 24h
  orphan:
    description:
      - Make the tokens orphans, so that revoking the token that created them does not revoke them.
    type: bool
    default: true
  token_no_default_policy:
    description:
      - Leave the C(default) policy off the role's tokens (they then cannot look up, renew or
        revoke themselves unless O(allowed_policies) allow it).
    type: bool
    default: true
  token_bound_cidrs:
    description:
      - Addresses or CIDR blocks the tokens may be used from; empty allows any.
    type: list
    elements: str
    default: []
  token_file:
    description:
      - File on the host the module runs on that holds a token of this role (created with mode
        C(0600)). Its directory must exist. Not set, no token is made.
    type: path
extends_documentation_fragment:
  - aegis.fleet.vault
attributes:
  check_mode:
    support: full
    description: Reports whether the role or the token would change; writes and creates nothing.
  diff_mode:
    support: full
    description: Shows the role's settings and the token file's state (accessor only) before and after.
author:
  - Aegis contributors (@aegis)
"""

EXAMPLES = r"""
- name: The controller's credential, in a file only root reads
  aegis.fleet.vault_token_role:
    name: aegis-controller
    allowed_policies: [aegis-controller]
    period: 24h
    token_file: /etc/aegis/controller/vault-token
"""

RETURN = r"""
name:
  description: The token role's name.
  returned: always
  type: str
  sample: aegis-controller
token_accessor:
  description: Accessor of the token in O(token_file) (not the token); empty without
    O(token_file) or in check mode before the token exists.
  returned: always
  type: str
  sample: npo5kI0yrvwKWn5w1wUuhhKt
"""

import os
import stat
import tempfile

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.aegis.fleet.plugins.module_utils.changes import text_diff
from ansible_collections.aegis.fleet.plugins.module_utils.vault_client import (
    Vault,
    argument_spec,
    as_text,
    cidrs,
    durations,
)

ARGUMENT_SPEC = argument_spec(
    name=dict(type="str", required=True),
    allowed_policies=dict(type="list", elements="str", required=True),
    period=dict(type="str", default="24h"),
    orphan=dict(type="bool", default=True),
    token_no_default_policy=dict(type="bool", default=True),
    token_bound_cidrs=dict(type="list", no_log=False, elements="str", default=[]),
    token_file=dict(type="path"),
)


def _role_state(data):
    return {"allowed_policies": sorted(data.get("allowed_policies") or []),
            "period": int(data.get("token_period") or data.get("period") or 0),
            "orphan": bool(data.get("orphan")),
            "token_no_default_policy": bool(data.get("token_no_default_policy")),
            "token_bound_cidrs": cidrs(data.get("token_bound_cidrs"))}


def _lookup(vault, token):
    """The server's data about ``token``, or None when it is not a valid token (403/400)."""
    answer = vault.answer_or_none("look up the token in the token file",
                                  vault.client.write_data, "auth/token/lookup",
                                  data={"token": token}, none_on=("Forbidden", "InvalidRequest"))
    return (answer or {}).get("data")


def _write_private(path, text):
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".vault-token-", dir=directory)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
        os.fsync(fd)
        os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    p = module.params
    wanted = dict(p, **durations(module, ["period"]))
    try:
        wanted["token_bound_cidrs"] = cidrs(p["token_bound_cidrs"], "token_bound_cidrs")
    except ValueError as err:
        module.fail_json(msg=str(err))
    path = p["token_file"]
    if path and not os.path.isdir(os.path.dirname(path) or "."):
        module.fail_json(msg="token_file %s: its directory does not exist; create it (mode 0700)"
                         % path)
    if path and os.path.islink(path):
        module.fail_json(msg="token_file %s is a symbolic link; give the real path" % path)
    vault = Vault(module)
    vault.require_policies(p["allowed_policies"], "allowed_policies")
    role_path = "auth/token/roles/%s" % p["name"]
    current = vault.read(role_path)
    before = {"role": _role_state(current) if current is not None else None}
    after = {"role": _role_state(wanted)}
    expected = sorted(after["role"]["allowed_policies"]
                      + ([] if after["role"]["token_no_default_policy"] else ["default"]))
    old, info, accessor = None, None, ""
    if path:
        if os.path.exists(path):
            with open(path) as f:
                old = f.read().strip()
            if old:
                module.no_log_values.add(old)
                info = _lookup(vault, old)
        mode_ok = old is not None and stat.S_IMODE(os.stat(path).st_mode) == 0o600
        good = (info is not None and info.get("role") == p["name"]
                and sorted(info.get("policies") or []) == expected
                and before["role"] == after["role"])
        before["token_file"] = ("valid token of role %s (accessor %s), mode %s"
                                % (info.get("role"), info.get("accessor"),
                                   "0600" if mode_ok else "not 0600")
                                if info else "missing" if old is None else "invalid token")
        after["token_file"] = (before["token_file"].replace("not 0600", "0600") if good
                               else "new token of role %s, mode 0600" % p["name"])
        accessor = info.get("accessor", "") if good else ""
    changed = before != after
    if changed and not module.check_mode:
        if before["role"] != after["role"]:
            vault.write(role_path, {"allowed_policies": after["role"]["allowed_policies"],
                                    "token_period": after["role"]["period"],
                                    "orphan": after["role"]["orphan"], "renewable": True,
                                    "token_no_default_policy":
                                        after["role"]["token_no_default_policy"],
                                    "token_bound_cidrs": after["role"]["token_bound_cidrs"]})
        if path and not accessor:
            answer = vault.write("auth/token/create/%s" % p["name"], {}) or {}
            auth = answer.get("auth") or {}
            token = auth.get("client_token", "")
            if not token:
                module.fail_json(msg="the server made no token from role %s" % p["name"])
            module.no_log_values.add(token)
            _write_private(path, token + "\n")
            accessor = auth.get("accessor", "")
            if info is not None:  # the replaced token must not stay usable
                vault.write("auth/token/revoke-accessor", {"accessor": info["accessor"]})
            after["token_file"] = "valid token of role %s (accessor %s), mode 0600" % (
                p["name"], accessor)
        elif path:
            os.chmod(path, 0o600)
    result = {"changed": changed, "name": p["name"], "token_accessor": accessor}
    if module._diff:
        result["diff"] = text_diff(as_text(before), as_text(after), role_path)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
