# Copyright: Aegis contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""sshd's principals files (AuthorizedPrincipalsFile /etc/ssh/auth_principals/%u) for the
hardening role: one file per account naming the certificate principals that may log in
as it, and the check of the account and principal names before anything changes."""

from __future__ import annotations

import re

from ansible.errors import AnsibleFilterError

DOCUMENTATION = r"""
name: ssh_principals
short_description: sshd principals files for aegis.fleet.managed_files, and their check
version_added: 0.3.0
description:
  - C(ssh_principals) returns one C(aegis.fleet.managed_files) entry per account of
    O(_input) (account to list of principals), the file
    C(<directory>/<account>) with one principal per line, mode 0644.
  - C(ssh_principals_errors) returns one message per account or principal name that cannot
    be written there (accounts like Debian user names, principals of letters, digits,
    C(.), C(_), C(@), C(-), at most 64); an empty list when all are fine.
options:
  _input:
    description: Account name to the list of principals that may log in as it.
    type: dict
    required: true
  directory:
    description: The directory of the principals files (C(ssh_principals) only).
    type: str
    default: /etc/ssh/auth_principals
author: Aegis contributors
"""

EXAMPLES = r"""
- name: Write the principals files
  aegis.fleet.managed_files:
    files: "{{ {'root': ['alice', 'bob']} | aegis.fleet.ssh_principals }}"

- name: Refuse bad names before anything changes
  ansible.builtin.assert:
    that: harden_sshd_principals | aegis.fleet.ssh_principals_errors | length == 0
"""

RETURN = r"""
_value:
  description: The managed_files entries (C(ssh_principals)) or the problems (C(ssh_principals_errors)).
  type: list
  elements: raw
"""

ACCOUNT = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")
PRINCIPAL = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._@-]{0,63}$")


def ssh_principals_errors(principals):
    if not isinstance(principals, dict):
        return ["harden_sshd_principals: expected a mapping of account -> list of principals, got %r"
                % (principals,)]
    errors = []
    for account, names in principals.items():
        where = "harden_sshd_principals.%s" % account
        if not isinstance(account, str) or not ACCOUNT.match(account):
            errors.append("%s: %r is not an account name (lower case letters, digits, '_', '.', '-')"
                          % (where, account))
        if not isinstance(names, list) or not names:
            errors.append("%s: expected a non-empty list of principals" % where)
            continue
        for name in names:
            if not isinstance(name, str) or not PRINCIPAL.match(name):
                errors.append("%s: %r is not a principal (letters, digits, '.', '_', '@', '-'; at most 64)"
                              % (where, name))
    return errors


def ssh_principals(principals, directory="/etc/ssh/auth_principals"):
    errors = ssh_principals_errors(principals)
    if errors:
        raise AnsibleFilterError("ssh_principals: " + "; ".join(errors))
    return [{"path": "%s/%s" % (directory.rstrip("/"), account), "mode": "0644",
             "content": "".join("%s\n" % name for name in names)}
            for account, names in sorted(principals.items())]


class FilterModule:
    def filters(self):
        return {"ssh_principals": ssh_principals, "ssh_principals_errors": ssh_principals_errors}
