"""aegis.fleet.harden's principals files (AuthorizedPrincipalsFile) and their check."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.aegis.fleet.plugins.filter.ssh_principals import (
    ssh_principals,
    ssh_principals_errors,
)

pytestmark = pytest.mark.unit


def test_one_file_per_account_one_principal_per_line():
    assert ssh_principals({"root": ["alice", "bob@example.test"], "deploy": ["ci-1"]}) == [
        {"path": "/etc/ssh/auth_principals/deploy", "mode": "0644", "content": "ci-1\n"},
        {"path": "/etc/ssh/auth_principals/root", "mode": "0644",
         "content": "alice\nbob@example.test\n"}]
    assert ssh_principals({}) == []


@pytest.mark.parametrize(("value", "message"), [
    ({"Root": ["alice"]}, "harden_sshd_principals.Root: 'Root' is not an account name"),
    ({"root": []}, "harden_sshd_principals.root: expected a non-empty list"),
    ({"root": "alice"}, "harden_sshd_principals.root: expected a non-empty list"),
    ({"root": ["alice smith"]}, "'alice smith' is not a principal"),
    ({"root": ["alice\nbob"]}, "is not a principal"),
    (["root"], "harden_sshd_principals: expected a mapping"),
])
def test_bad_names_are_named(value, message):
    errors = ssh_principals_errors(value)
    assert len(errors) == 1 and message in errors[0], errors
    with pytest.raises(AnsibleFilterError, match="ssh_principals: "):
        ssh_principals(value)
