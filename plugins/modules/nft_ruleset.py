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
    agent's, a container engine's) are never touched, and the ruleset is never flushed.
  - The change is one nft transaction (C(table X {}), C(delete table X), then O(content)), so
    there is no moment without rules. It is checked with C(nft -c) first.
  - Idempotent by comparing the tables as the kernel lists them. O(content) is loaded into a
    throwaway network namespace to get its canonical form (interfaces that it matches with
    C(iif)/C(oif) are stood in for there); counter and quota usage are ignored.
  - Commit-confirmed rollback guard. Before a change the current state of the managed tables
    is saved under C(/run/aegis/nft-guard) (tmpfs), checked with C(nft -c) to load back (the
    module fails, changing nothing, when it would not; also in check mode), and a transient
    systemd timer is armed that restores it after O(rollback_timeout) seconds, deleting managed
    tables that did not exist before. Reconnect (the C(reset_connection) action of
    M(ansible.builtin.meta)) and run the module with O(state=confirmed) to keep the change; if
    the new rules cut the management path the confirmation cannot reach the node, and the node
    restores the old tables by itself.
  - A second change under the same O(guard_name) before confirmation keeps the state saved by
    the first one, so the rollback always returns to the last confirmed state.
  - Keep C(ct state established,related accept) in a default-drop input chain; otherwise the
    connection that applies the change is cut too and the task waits for the rollback.
options:
  content:
    description:
      - An nft script that declares whole tables only (C(table FAMILY NAME { ... }), the family
        written out); C(define) variables may precede them. C(flush ruleset), C(include) and
        statements on tables the script does not declare are refused.
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
      - V(confirmed) keeps the last change made under O(guard_name) and disarms its rollback
        guard; it fails if the guard already rolled the change back.
    type: str
    choices: [present, absent, confirmed]
    default: present
  rollback_timeout:
    description:
      - Seconds after which an unconfirmed change is rolled back. V(0) applies without a guard.
    type: int
    default: 60
  guard_name:
    description:
      - Name of the guard's transient systemd units (C(NAME-rollback.timer) and C(.service)) and
        saved-state file. Use the same name for the change and its confirmation.
    type: str
    default: aegis-nft-guard
attributes:
  check_mode:
    support: full
    description: Validates O(content) and computes the change and the diff; changes nothing and arms no guard.
  diff_mode:
    support: full
    description: Shows the managed tables before and after, as the kernel lists them.
  platform:
    support: full
    platforms: posix
    description: Debian-family Linux nodes with systemd.
requirements:
  - nft, unshare (util-linux), ip (iproute2) and systemd-run on the managed node
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
  description: The tables this run manages (for O(state=confirmed), the tables the confirmed guard covered), as C(FAMILY NAME).
  returned: always
  type: list
  elements: str
  sample: [inet aegis_baseline]
guard:
  description:
    - V(armed) when this run changed the tables and the rollback guard now waits for confirmation, or a guard
      armed earlier is still waiting.
    - V(disarmed) after O(state=confirmed) stopped an armed guard.
    - V(fired) when a guard's timeout passed without confirmation and the saved tables were restored
      (O(state=confirmed) then fails).
    - V(none) when no guard is armed. In check mode, the current state.
  returned: always
  type: str
  sample: armed
digest:
  description:
    - SHA-256 of the tables' normalised listing after this run (what
      C(aegis.fleet.hardening_facts) reports for a table under C(nftables)), for
      O(state=present) and O(state=absent). A play can record it and skip this module later
      while the live digest still matches.
  returned: unless O(state=confirmed)
  type: str
  sample: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
rollback_file:
  description: Where the tables to restore are saved while the guard is armed (tmpfs).
  returned: when this run armed the guard
  type: str
  sample: /run/aegis/nft-guard/aegis-nft-guard.nft
rollback_unit:
  description: The transient systemd timer that restores the saved tables unless confirmed.
  returned: when this run armed the guard
  type: str
  sample: aegis-nft-guard-rollback.timer
rollback_result:
  description: The systemd C(Result) of the rollback service, when a guard had fired.
  returned: when O(state=confirmed) finds that the guard fired
  type: str
  sample: success
"""

import hashlib
import re
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.aegis.fleet.plugins.module_utils.changes import report
from ansible_collections.aegis.fleet.plugins.module_utils.nftables import (
    Nft,
    RulesetError,
    declared_tables,
    delete_script,
    normalise,
    parse_table_names,
    replace_script,
    restore_script,
    restored_tables,
)
from ansible_collections.aegis.fleet.plugins.module_utils.rollback_guard import Guard

_GUARD_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
ARGUMENT_SPEC = dict(
    content=dict(type="str"),
    tables=dict(type="list", elements="str"),
    state=dict(type="str", default="present", choices=["present", "absent", "confirmed"]),
    rollback_timeout=dict(type="int", default=60),
    guard_name=dict(type="str", default="aegis-nft-guard"),
)
REQUIRED_IF = [("state", "present", ["content"]), ("state", "absent", ["content", "tables"], True)]
MUTUALLY_EXCLUSIVE = [("content", "tables")]


def _names(tables):
    return ["%s %s" % t for t in tables]


def confirm(module, guard):
    """state=confirmed: keep the last change (stop the guard), or fail loudly if it already fired."""
    status = guard.status()
    saved = guard.saved() or ""
    tables = _names(restored_tables(saved))
    if status == "fired":
        # Let a restore that is running finish before its saved file goes away.
        for _i in range(50):
            if not guard.service.is_active():
                break
            time.sleep(0.2)
        result = guard.rollback_result()
        if not module.check_mode:
            guard.disarm()
        module.fail_json(
            msg="guard %s already rolled back the unconfirmed change (rollback service result: %s): the "
                "tables saved before it (%s) are in force again. Nothing is confirmed. If the new rules cut "
                "the management path, fix them; otherwise raise rollback_timeout, then apply again."
                % (guard.name, result, ", ".join(tables) or "none"),
            guard="fired", tables=tables, rollback_result=result)
    if status == "armed" and not module.check_mode:
        guard.disarm()
    module.exit_json(changed=status == "armed", tables=tables,
                     guard="disarmed" if status == "armed" else "none")


def check_restore(module, nft, restore, tables, result):
    """Refuse to arm a guard that could not restore: the tables as they are now must load
    back from their saved listing (nft -c), or a rolled-back change would stay in force."""
    rc, out, err = nft.run(["-c", "-f", "-"], data=restore, check_rc=False)
    if rc != 0:
        module.fail_json(
            msg="the rollback guard could not restore %s: nft -c rejects the restore script made from "
                "their current listing (%s). Nothing was changed and no guard was armed. Rules nft cannot "
                "load back from a listing (for example xtables matches that iptables-nft added) must be "
                "removed or rewritten in nft syntax first; or apply with rollback_timeout=0 and no "
                "rollback." % (", ".join(_names(tables)), (err or out).strip()),
            rc=rc, **result)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, required_if=REQUIRED_IF,
                           mutually_exclusive=MUTUALLY_EXCLUSIVE, supports_check_mode=True)
    p = module.params
    if p["rollback_timeout"] < 0:
        module.fail_json(msg="rollback_timeout: must be 0 (no guard) or a number of seconds, not %d"
                             % p["rollback_timeout"])
    if not _GUARD_NAME.match(p["guard_name"]):
        module.fail_json(msg="guard_name: %r may hold only letters, digits, '-' and '_' (1-64 of them), "
                             "because it names systemd units; e.g. aegis-nft-guard" % p["guard_name"])
    guard = Guard(module, p["guard_name"])

    if p["state"] == "confirmed":
        if p["content"] or p["tables"]:
            module.fail_json(msg="content, tables: state=confirmed takes neither; it confirms the last change "
                                 "armed under guard_name")
        confirm(module, guard)

    try:
        tables = declared_tables(p["content"]) if p["content"] else parse_table_names(p["tables"])
    except RulesetError as exc:
        module.fail_json(msg="%s: %s" % ("content" if p["content"] else "tables", exc))

    nft = Nft(module)
    listings = nft.listings(tables)
    before = normalise("".join(listings[t] for t in tables if t in listings))
    if p["state"] == "present":
        after = nft.canonical(p["content"], tables)
        script = replace_script(tables, p["content"])
    else:
        after = ""
        script = delete_script(tables)
    status = guard.status()
    result = dict(tables=_names(tables), guard=status, digest=hashlib.sha256(after.encode()).hexdigest())
    header = "nftables %s" % ", ".join(_names(tables))
    if before == after:
        report(module, before, after, header, **result)
    nft.check(script)
    restore = None
    if p["rollback_timeout"] > 0:
        previous = guard.saved() if status == "armed" else None
        restore = restore_script(tables, listings, previous)
        check_restore(module, nft, restore, tables, result)
    if not module.check_mode:
        if restore is not None:
            guard.arm(restore, p["rollback_timeout"], nft.nft)
            result.update(guard="armed", rollback_file=guard.path, rollback_unit=guard.unit + ".timer")
        rc, out, err = nft.run(["-f", "-"], data=script, check_rc=False)
        if rc != 0:
            if p["rollback_timeout"] > 0 and status != "armed":
                guard.disarm()
            module.fail_json(msg="nft could not apply the tables (nothing changed): %s" % (err or out).strip(),
                             rc=rc, **result)
    report(module, before, after, header, **result)


if __name__ == "__main__":
    main()
