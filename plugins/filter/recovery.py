# Copyright: Aegis contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Checks the recovery playbooks make on the control node before they touch a node."""

from __future__ import annotations

from ansible_collections.aegis.fleet.plugins.module_utils.recovery import recipient_problem

DOCUMENTATION = r"""
name: age_recipient_problem
short_description: What is wrong with an age X25519 recipient, or an empty string
version_added: 0.1.0
description:
  - Returns an empty string when O(_input) is an age X25519 public key (C(age1) and 58
    bech32 characters with a valid checksum), else one sentence saying what is wrong and
    how to make a key pair (C(age-keygen), or C(pyrage)).
  - An age identity (C(AGE-SECRET-KEY-1...)) given by mistake is named as such.
options:
  _input:
    description: The recipient to check.
    type: str
    required: true
author: Aegis contributors
"""

EXAMPLES = r"""
- name: Refuse a bad incident-response key before collecting anything
  ansible.builtin.assert:
    that: (forensics_recipient | aegis.fleet.age_recipient_problem) == ''
    fail_msg: "forensics_recipient: {{ forensics_recipient | aegis.fleet.age_recipient_problem }}"
"""

RETURN = r"""
_value:
  description: The problem, or an empty string.
  type: str
"""


def age_recipient_problem(value):
    return recipient_problem(value) or ""


class FilterModule:
    def filters(self):
        return {"age_recipient_problem": age_recipient_problem}
