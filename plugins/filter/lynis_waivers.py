# Copyright: Aegis contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Lynis findings with the collection's waivers applied: what the audit report lists as
waived (with the reason) and what is left."""

from __future__ import annotations

import yaml
from ansible.errors import AnsibleFilterError

DOCUMENTATION = r"""
name: lynis_report
short_description: Lynis findings of one node with the waivers applied
version_added: 0.1.0
description:
  - Reads the lines of a Lynis report file (C(report.dat)) and a waiver file's text (a YAML
    list of C({id, reason, applies, detail})) and returns the hardening index, the warnings
    and suggestions, which of them are waived (with the waiver's reason) and which are left.
  - A waiver matches a finding when its C(id) is the finding's test id, its C(applies)
    (C(all), C(container) or C(vm); default C(all)) fits the node, and its optional
    C(detail) occurs in the finding's detail field (for tests such as C(SSH-7408) that
    report several settings under one id). For C(KRNL-6000), one suggestion for every kernel
    key that differs from Lynis's profile, a waiver's C(detail) is one key, and the finding is
    waived only when each differing key (from the report's details) has its waiver, or
    one waiver without C(detail) covers them all.
  - The companion filter C(lynis_waiver_errors) returns what is wrong with a waiver file.
options:
  _input:
    description: The lines of the Lynis report file.
    type: list
    elements: str
    required: true
  waivers:
    description: The waiver file's text.
    type: str
    required: true
  container:
    description: Whether the node is a container (selects C(applies) container or vm).
    type: bool
    default: false
author: Aegis contributors
"""

EXAMPLES = r"""
- name: The node's Lynis findings with the waivers applied
  ansible.builtin.debug:
    msg: "{{ lynis_lines | aegis.fleet.lynis_report(lookup('ansible.builtin.file', 'lynis_waivers.yml'), container=true) }}"
"""

RETURN = r"""
_value:
  description: C(hardening_index), C(warnings), C(suggestions) (the report's entries),
    C(waived) (C(id), C(kind) warning or suggestion, C(detail), C(reason)),
    C(warnings_unwaived) and C(suggestions_unwaived), and C(sysctl_differs), each kernel
    key that Lynis's C(KRNL-6000) found different from its scan profile, with its C(value)
    and the C(wanted) value (alternatives separated by spaces), from the report's details.
  type: dict
"""

APPLIES = ("all", "container", "vm")
KEYS = ("id", "reason", "applies", "detail")
KINDS = (("warning", "warnings"), ("suggestion", "suggestions"))
SYSCTL_TEST = "KRNL-6000"


def _entry_errors(entry, where):
    if not isinstance(entry, dict):
        return ["%s: %r is not a waiver; write {id: SSH-7408, reason: \"why\", applies: all}" % (where, entry)]
    errors = []
    unknown = sorted(str(k) for k in entry if k not in KEYS)
    if unknown:
        errors.append("%s: unknown key(s) %s; a waiver has id, reason, applies and detail"
                      % (where, ", ".join(unknown)))
    wid = entry.get("id")
    if not isinstance(wid, str) or not wid.strip() or "|" in wid:
        errors.append("%s.id: %r is not a Lynis test id; write e.g. id: SSH-7408" % (where, wid))
    reason = entry.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        errors.append("%s.reason: missing or empty; say why the finding does not apply" % where)
    if entry.get("applies", "all") not in APPLIES:
        errors.append("%s.applies: %r is not one of %s" % (where, entry.get("applies"), ", ".join(APPLIES)))
    if "detail" in entry and (not isinstance(entry["detail"], str) or not entry["detail"]):
        errors.append("%s.detail: %r is not a non-empty string" % (where, entry["detail"]))
    return errors


def lynis_waiver_errors(text, source="the waiver file"):
    """What is wrong with a waiver file's text (an empty list when nothing is)."""
    try:
        data = yaml.safe_load(text or "")
    except yaml.YAMLError as exc:
        return ["%s is not YAML: %s" % (source, " ".join(str(exc).split()))]
    if not isinstance(data, list):
        return ["%s: the top level must be a list of waivers ({id, reason, applies}), got %s"
                % (source, type(data).__name__)]
    errors = []
    for i, entry in enumerate(data):
        errors.extend(_entry_errors(entry, "%s[%d]" % (source, i)))
    return errors


def _fields(entry):
    parts = entry.split("|")
    return parts[0], (parts[2] if len(parts) > 2 else "")


def _waiver_for(entry, waivers, container, sysctl_differs=None):
    test_id, detail = _fields(entry)
    scope = "container" if container else "vm"
    mine = [w for w in waivers if w["id"] == test_id and w.get("applies", "all") in ("all", scope)]
    if test_id == SYSCTL_TEST and sysctl_differs:
        return _sysctl_waiver(mine, sysctl_differs)
    for waiver in mine:
        if waiver.get("detail") and waiver["detail"] not in detail:
            continue
        return waiver
    return None


def _sysctl_waiver(waivers, sysctl_differs):
    # KRNL-6000 is one suggestion for every kernel key that differs from Lynis's profile:
    # a waiver without a detail covers them all, otherwise each key needs a waiver whose
    # detail is that key, and the finding stays when one key has none
    reasons = []
    for key in sorted(sysctl_differs):
        waiver = next((w for w in waivers if w.get("detail", key) == key), None)
        if waiver is None:
            return None
        if "detail" not in waiver:
            return waiver
        reasons.append("%s: %s" % (key, " ".join(waiver["reason"].split())))
    return {"id": SYSCTL_TEST, "reason": "; ".join(reasons)}


def _sysctl_differs(lines):
    # details[]=KRNL-6000|sysctl|desc:...;field:KEY;prefval:WANTED;value:LIVE;|
    out = {}
    for line in lines:
        if not line.startswith("details[]=%s|" % SYSCTL_TEST):
            continue
        fields = {}
        for part in line.partition("=")[2].split("|")[2].split(";"):
            name, sep, value = part.partition(":")
            if sep:
                fields[name] = value
        if fields.get("field"):
            out[fields["field"]] = {"value": fields.get("value", ""),
                                    "wanted": fields.get("prefval", "")}
    return out


def lynis_report(lines, waivers, container=False):
    if not isinstance(lines, list):
        raise AnsibleFilterError("aegis.fleet.lynis_report: the input must be the report's lines")
    errors = lynis_waiver_errors(waivers)
    if errors:
        raise AnsibleFilterError("aegis.fleet.lynis_report: " + "; ".join(errors))
    rules = yaml.safe_load(waivers or "") or []
    sysctl_differs = _sysctl_differs(lines)
    out = {"hardening_index": "", "waived": [], "sysctl_differs": sysctl_differs}
    for line in lines:
        if line.startswith("hardening_index="):
            out["hardening_index"] = line.partition("=")[2]
    for kind, plural in KINDS:
        entries = [line.partition("=")[2] for line in lines if line.startswith(kind + "[]=")]
        out[plural] = entries
        out[plural + "_unwaived"] = []
        for entry in entries:
            waiver = _waiver_for(entry, rules, container, sysctl_differs)
            if waiver is None:
                out[plural + "_unwaived"].append(entry)
                continue
            test_id, detail = _fields(entry)
            out["waived"].append({"id": test_id, "kind": kind, "detail": detail,
                                  "reason": " ".join(waiver["reason"].split())})
    return out


class FilterModule:
    def filters(self):
        return {"lynis_report": lynis_report, "lynis_waiver_errors": lynis_waiver_errors}
