#!/usr/bin/python
# Copyright: Aegis contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: nft_ruleset
short_description: Replace whole nftables tables atomically, with a rollback guard
version_added: 0.1.0
description:
  - Manages the nftables tables that O(content) declares, and only those; other tables (the
    agent's, a container engine's) are never touched.
  - The change is one nft transaction, so there is no moment without rules.
  - Idempotent by comparing the tables as the kernel lists them (O(content) is loaded into a
    throwaway network namespace to get its canonical form; counter values are ignored).
  - Commit-confirmed rollback guard. Before a change the current tables are saved under
    C(/run/aegis/nft-guard) and a transient systemd timer is armed that restores them after
    O(rollback_timeout) seconds. Reconnect (the C(reset_connection) action of
    M(ansible.builtin.meta)) and run the module with O(state=confirmed) to keep the change; if the new rules cut the
    management path the confirmation cannot reach the node, and the node restores the old
    tables by itself.
options:
  content:
    description:
      - An nft script that declares whole tables only (C(table FAMILY NAME { ... })).
      - Required with O(state=present); with O(state=absent) its tables are deleted.
    type: str
  tables:
    description:
      - Tables to delete with O(state=absent), as C(FAMILY NAME) strings, instead of O(content).
    type: list
    elements: str
  state:
    description:
      - V(present) makes the declared tables exactly O(content).
      - V(absent) deletes them.
      - V(confirmed) keeps the last change and disarms the rollback guard.
    type: str
    choices: [present, absent, confirmed]
    default: present
  rollback_timeout:
    description:
      - Seconds after which an unconfirmed change is rolled back. V(0) applies without a guard.
    type: int
    default: 60
  guard_name:
    description: Name of the guard's transient systemd units and saved-state file.
    type: str
    default: aegis-nft-guard
attributes:
  check_mode:
    support: full
    description: Computes and reports the change without making it.
  diff_mode:
    support: full
    description: Shows the before and after state.
  platform:
    support: full
    platforms: posix
    description: Debian-family Linux nodes with systemd.
requirements:
  - nft, unshare (util-linux) and systemd-run on the managed node
author:
  - Aegis contributors (@aegis)
"""

EXAMPLES = r"""
- name: Apply a default-drop inbound table, rolled back after 60 s unless confirmed
  aegis.fleet.nft_ruleset:
    content: |
      table inet aegis_baseline {
        chain input {
          type filter hook input priority filter; policy drop;
          iif "lo" accept
          ct state established,related accept
          ip saddr 10.0.0.0/8 tcp dport 22 accept
        }
      }
    rollback_timeout: 60
  register: baseline

- name: Reconnect over a new SSH connection
  ansible.builtin.meta: reset_connection

- name: Confirm from the new connection
  aegis.fleet.nft_ruleset:
    state: confirmed
  when: baseline is changed

- name: Remove the table again
  aegis.fleet.nft_ruleset:
    tables: [inet aegis_baseline]
    state: absent
    rollback_timeout: 0
"""

RETURN = r"""
tables:
  description: The tables this run manages, as C(FAMILY NAME).
  returned: always
  type: list
  elements: str
  sample: [inet aegis_baseline]
guard:
  description: V(armed) when a change awaits confirmation, V(disarmed) after O(state=confirmed) found one, otherwise V(none).
  returned: always
  type: str
  sample: armed
rollback_file:
  description: Where the previous tables are saved while the guard is armed.
  returned: when the guard is armed
  type: str
  sample: /run/aegis/nft-guard/aegis-nft-guard.nft
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.aegis.fleet.plugins.module_utils.changes import report
from ansible_collections.aegis.fleet.plugins.module_utils.nftables import (
    FAMILIES,
    Guard,
    Nft,
    RulesetError,
    declared_tables,
    delete_script,
    replace_script,
)


def _parse_tables(module, items):
    tables = []
    for item in items:
        parts = item.split()
        if len(parts) != 2 or parts[0] not in FAMILIES:
            module.fail_json(msg="tables: %r is not 'FAMILY NAME' with FAMILY one of %s, e.g. 'inet aegis_baseline'"
                             % (item, ", ".join(FAMILIES)))
        tables.append((parts[0], parts[1]))
    return tables


def main():
    module = AnsibleModule(
        argument_spec=dict(
            content=dict(type="str"),
            tables=dict(type="list", elements="str"),
            state=dict(type="str", default="present", choices=["present", "absent", "confirmed"]),
            rollback_timeout=dict(type="int", default=60),
            guard_name=dict(type="str", default="aegis-nft-guard"),
        ),
        required_if=[("state", "present", ["content"])],
        mutually_exclusive=[("content", "tables")],
        supports_check_mode=True,
    )
    p = module.params
    if p["rollback_timeout"] < 0:
        module.fail_json(msg="rollback_timeout must be 0 (no guard) or a number of seconds, not %d" % p["rollback_timeout"])
    if not p["guard_name"].replace("-", "").replace("_", "").isalnum():
        module.fail_json(msg="guard_name may hold letters, digits, '-' and '_' only (it names systemd units)")
    guard = Guard(module, p["guard_name"])

    if p["state"] == "confirmed":
        if p["content"] or p["tables"]:
            module.fail_json(msg="state=confirmed takes no content or tables: it confirms the last change")
        armed = guard.armed()
        if armed and not module.check_mode:
            guard.disarm()
        module.exit_json(changed=armed, tables=[], guard="disarmed" if armed else "none")

    if p["state"] == "absent" and not (p["content"] or p["tables"]):
        module.fail_json(msg="state=absent needs content or tables naming what to delete")
    try:
        tables = declared_tables(p["content"]) if p["content"] else _parse_tables(module, p["tables"])
    except RulesetError as exc:
        module.fail_json(msg="content: %s" % exc)
    names = ["%s %s" % t for t in tables]

    nft = Nft(module)
    before, present = nft.current_text(tables)
    if p["state"] == "present":
        after = nft.canonical(p["content"])
        script = replace_script(tables, p["content"])
    else:
        after = ""
        script = delete_script(tables)
    header = "nftables tables %s" % ", ".join(names)
    result = dict(tables=names, guard="none")
    if before == after:
        report(module, before, after, header, **result)
    nft.check(script)
    if not module.check_mode:
        if p["rollback_timeout"] > 0:
            restore = delete_script(tables)
            for family, name in tables:
                if (family, name) in present:
                    restore += nft.run(["list", "table", family, name])[1]
            guard.arm(restore, p["rollback_timeout"], nft.nft)
            result.update(guard="armed", rollback_file=guard.path)
        nft.apply(script)
    report(module, before, after, header, **result)


if __name__ == "__main__":
    main()
