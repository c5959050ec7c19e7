#!/usr/bin/python
# Copyright: Aegis contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: vault_database
short_description: A database connection and its dynamic-credential roles on a Vault or OpenBao server
version_added: 0.1.0
description:
  - Configures the connection O(name) of the database secrets engine at O(mount)
    (C(MOUNT/config/NAME)) and the roles in O(roles) (C(MOUNT/roles/ROLE)), each of which
    creates a database login per lease.
  - The connection's C(allowed_roles) are exactly the names in O(roles). Roles not listed
    are left alone.
  - The server checks the connection when it is written (O(verify_connection)); a database
    it cannot log in to is an error with the server's message.
  - The password cannot be read back from the server, so it is written when the connection
    is created or its other settings change, and on every run with O(password_update=always).
options:
  mount:
    description:
      - Path of the database secrets engine.
    type: str
    default: database
  name:
    description:
      - Name of the connection.
    type: str
    required: true
  plugin_name:
    description:
      - Database plugin.
    type: str
    default: postgresql-database-plugin
  connection_url:
    description:
      - Connection URL with the server's own placeholders, for example
        C(postgresql://{{username}}:{{password}}@db.example.com:5432/postgres?sslmode=verify-full).
        In a playbook, keep Ansible from templating them (C(!unsafe) or C({% raw %})).
    type: str
    required: true
  username:
    description:
      - The login the server uses to create and drop the credentials' logins (it needs
        C(CREATEROLE), and membership in C(pg_signal_backend) to end their sessions).
    type: str
    required: true
  password:
    description:
      - Its password. Never logged, shown in a diff or returned.
    type: str
    required: true
  password_update:
    description:
      - C(on_create) writes the password only when the connection is written anyway;
        C(always) writes it on every run (always reported as a change).
    type: str
    choices: [on_create, always]
    default: on_create
  verify_connection:
    description:
      - Have the server log in to the database when the connection is written.
    type: bool
    default: true
  roles:
    description:
      - The roles of this connection.
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: Name of the role (credentials are read at C(MOUNT/creds/NAME)).
        type: str
        required: true
      creation_statements:
        description: SQL that creates the login (placeholders C({{name}}), C({{password}}),
          C({{expiration}})).
        type: list
        elements: str
        required: true
      revocation_statements:
        description: SQL run when the lease ends or is revoked.
        type: list
        elements: str
        default: []
      default_ttl:
        description: Default lease TTL (seconds or a duration such as C(1h)).
        type: str
        default: 1h
      max_ttl:
        description: Longest a lease may be renewed to (seconds or a duration).
        type: str
        default: 24h
extends_documentation_fragment:
  - aegis.fleet.vault
attributes:
  check_mode:
    support: full
    description: Reports what would change; writes nothing (the connection is not verified).
  diff_mode:
    support: full
    description: Shows the connection (URL with placeholders, user, roles) and each role's
      statements and TTLs before and after; the password shows only as C(set) or C(updated).
author:
  - Aegis contributors (@aegis)
"""

EXAMPLES = r"""
- name: PostgreSQL logins with a TTL per lease for the web nodes
  aegis.fleet.vault_database:
    mount: aegis-db
    name: appdb
    connection_url: !unsafe "postgresql://{{username}}:{{password}}@db.example.com:5432/app"
    username: vault_admin
    password: "{{ vault_db_admin_password }}"
    roles:
      - name: web
        creation_statements:
          - !unsafe >-
            CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}'
            VALID UNTIL '{{expiration}}';
        revocation_statements:
          - !unsafe >-
            SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{{name}}';
          - !unsafe DROP ROLE IF EXISTS "{{name}}";
        default_ttl: 1h
        max_ttl: 24h
"""

RETURN = r"""
name:
  description: The connection's name.
  returned: always
  type: str
  sample: appdb
roles:
  description: The names of the roles of the connection.
  returned: always
  type: list
  elements: str
  sample: [web]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.aegis.fleet.plugins.module_utils.changes import text_diff
from ansible_collections.aegis.fleet.plugins.module_utils.vault_client import (
    Vault,
    argument_spec,
    as_text,
    seconds,
)

ROLE_SPEC = dict(
    name=dict(type="str", required=True),
    creation_statements=dict(type="list", elements="str", required=True),
    revocation_statements=dict(type="list", elements="str", default=[]),
    default_ttl=dict(type="str", default="1h"),
    max_ttl=dict(type="str", default="24h"),
)
ARGUMENT_SPEC = argument_spec(
    mount=dict(type="str", default="database"),
    name=dict(type="str", required=True),
    plugin_name=dict(type="str", default="postgresql-database-plugin"),
    connection_url=dict(type="str", required=True),
    username=dict(type="str", required=True),
    password=dict(type="str", required=True, no_log=True),
    password_update=dict(type="str", no_log=False, choices=["on_create", "always"], default="on_create"),
    verify_connection=dict(type="bool", default=True),
    roles=dict(type="list", elements="dict", default=[], options=ROLE_SPEC),
)


def _connection_state(data):
    details = data.get("connection_details") or {}
    return {"plugin_name": data.get("plugin_name", ""),
            "connection_url": details.get("connection_url", ""),
            "username": details.get("username", ""),
            "allowed_roles": sorted(data.get("allowed_roles") or [])}


def _role_state(data):
    return {"db_name": data.get("db_name", ""),
            "creation_statements": [s.strip() for s in data.get("creation_statements") or []],
            "revocation_statements": [s.strip() for s in data.get("revocation_statements") or []],
            "default_ttl": int(data.get("default_ttl") or 0),
            "max_ttl": int(data.get("max_ttl") or 0)}


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    p = module.params
    mount = p["mount"].strip("/")
    roles = {}
    for role in p["roles"]:
        if role["name"] in roles:
            module.fail_json(msg="roles: %r is listed twice" % role["name"])
        try:
            ttl = {k: seconds(role[k], "roles[%s].%s" % (role["name"], k))
                   for k in ("default_ttl", "max_ttl")}
        except ValueError as err:
            module.fail_json(msg=str(err))
        if ttl["max_ttl"] and ttl["default_ttl"] > ttl["max_ttl"]:
            module.fail_json(msg="roles[%s]: default_ttl is longer than max_ttl" % role["name"])
        roles[role["name"]] = _role_state(dict(role, db_name=p["name"], **ttl))
    vault = Vault(module)
    exists = vault.require_mount(mount, "database")
    config_path = "%s/config/%s" % (mount, p["name"])
    current = vault.read(config_path) if exists else None
    before = {"connection": _connection_state(current) if current is not None else None,
              "roles": {}}
    after_conn = {"plugin_name": p["plugin_name"], "connection_url": p["connection_url"],
                  "username": p["username"], "allowed_roles": sorted(roles)}
    write_conn = before["connection"] != after_conn or p["password_update"] == "always"  # noqa: S105
    # the diff says only whether a password is set and whether it is written now
    after = {"connection": dict(after_conn, password="updated" if write_conn else "set"),
             "roles": {}}
    if before["connection"] is not None:
        before["connection"]["password"] = "set"  # noqa: S105 - a marker, not the password
    for name, wanted in roles.items():
        data = vault.read("%s/roles/%s" % (mount, name)) if exists else None
        before["roles"][name] = _role_state(data) if data is not None else None
        after["roles"][name] = wanted
    changed = write_conn or before["roles"] != after["roles"]
    if changed and not module.check_mode:
        if write_conn:
            vault.write(config_path, {"plugin_name": p["plugin_name"],
                                      "connection_url": p["connection_url"],
                                      "username": p["username"], "password": p["password"],
                                      "allowed_roles": sorted(roles),
                                      "verify_connection": p["verify_connection"]})
        for name, wanted in roles.items():
            if before["roles"][name] != wanted:
                vault.write("%s/roles/%s" % (mount, name), wanted)
    result = {"changed": changed, "name": p["name"], "roles": sorted(roles)}
    if module._diff:
        result["diff"] = text_diff(as_text(before), as_text(after), config_path)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
