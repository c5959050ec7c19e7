#!/usr/bin/python
# Copyright: Aegis contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: sysctls
short_description: Set many sysctls in one call, live and in one sysctl.d file
version_added: 0.3.0
description:
  - Writes O(path), a C(sysctl.d) file this module owns whole, with one C(name = value)
    line per entry of O(values), and sets every value that differs in C(/proc/sys) now,
    so the node has the settings without a reboot and keeps them after one.
  - One module run for the whole list, where C(ansible.posix.sysctl) needs one per
    setting, so a converge that changes nothing stays cheap.
  - A name the running kernel does not have fails the task before anything is written,
    naming every such key.
options:
  values:
    description: Sysctl name (dotted, for example C(net.ipv4.tcp_syncookies)) to value.
    type: dict
    required: true
  path:
    description: The C(sysctl.d) file to write; it holds exactly O(values) afterwards.
    type: path
    required: true
  apply:
    description: Also set the values in C(/proc/sys) now (V(false) only writes the file).
    type: bool
    default: true
attributes:
  check_mode:
    support: full
    description: Reports the file and the live values that would change, changes nothing.
  diff_mode:
    support: full
    description: The file before and after, and the live values that differ.
  platform:
    support: full
    platforms: posix
    description: Linux.
author:
  - Aegis contributors (@aegis)
"""

EXAMPLES = r"""
- name: Network sysctls of this node's namespace
  aegis.fleet.sysctls:
    path: /etc/sysctl.d/90-aegis-net.conf
    values:
      net.ipv4.tcp_syncookies: 1
      net.ipv4.conf.all.rp_filter: 1
"""

RETURN = r"""
path:
  description: The file written.
  returned: always
  type: str
  sample: /etc/sysctl.d/90-aegis-net.conf
live_changed:
  description: Names whose live value was (or, in check mode, would be) set.
  returned: always
  type: list
  elements: str
  sample: [net.ipv4.conf.all.rp_filter]
file_changed:
  description: Whether the file was (or would be) rewritten.
  returned: always
  type: bool
"""

import os
import re

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.aegis.fleet.plugins.module_utils.files import read_text, write_atomic
from ansible_collections.aegis.fleet.plugins.module_utils.sysctl_values import (
    normal,
    proc_path,
    render_conf,
)

NAME = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_*:@-]+)+$")
ARGUMENT_SPEC = dict(
    values=dict(type="dict", required=True),
    path=dict(type="path", required=True),
    apply=dict(type="bool", default=True),
)


def check(values, root="/proc/sys"):
    """Problems with ``values`` (empty when fine): bad names, list/dict values, names the
    kernel lacks."""
    problems = []
    for name, value in values.items():
        if not NAME.match(name) or ".." in name:
            problems.append("%r is not a sysctl name (dotted, e.g. 'net.ipv4.tcp_syncookies')" % name)
        elif isinstance(value, (dict, list)) or value is None:
            problems.append("%s: the value must be a number or a string, not %r" % (name, value))
        elif not os.path.exists(proc_path(name, root)):
            problems.append("%s: this kernel has no such sysctl (%s is missing)" % (name, proc_path(name, root)))
    return problems


def live(values, root="/proc/sys"):
    """name -> current value (normalised) for every name."""
    current = {}
    for name in values:
        with open(proc_path(name, root)) as fh:
            current[name] = normal(fh.read())
    return current


def apply_in_order(values, before, root="/proc/sys"):
    """Set the live values in the given order, each read again just before it is written:
    one write can change another setting (turning net.ipv4.conf.all.forwarding off sets
    all.accept_redirects to 1), so what differed before the first write is not what
    differs later. Returns (names written, "name (error)" for each the kernel refused);
    ``before[name]`` becomes the value each written name had just before its write."""
    written, failed = [], []
    for name, value in values.items():
        path = proc_path(name, root)
        with open(path) as fh:
            now = normal(fh.read())
        if now == normal(value):
            continue
        before[name] = now
        try:
            with open(path, "w") as fh:
                fh.write(" ".join(normal(value).split("\t")))
            written.append(name)
        except OSError as err:
            failed.append("%s (%s)" % (name, err.strerror))
    return written, failed


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    p = module.params
    values = p["values"]
    problems = check(values)
    if problems:
        module.fail_json(msg="Nothing was changed: " + "; ".join(problems))
    wanted_text = render_conf(values)
    before_text = read_text(p["path"])
    current = live(values) if p["apply"] else {}
    to_set = [name for name in values if p["apply"] and current[name] != normal(values[name])]
    file_changed = before_text != wanted_text
    if not module.check_mode:
        if file_changed:
            if not os.path.isdir(os.path.dirname(p["path"])):
                module.fail_json(msg="path: the directory %s does not exist" % os.path.dirname(p["path"]))
            write_atomic(p["path"], wanted_text.encode(), 0o644)
        to_set, failed = apply_in_order(values, current) if p["apply"] else ([], [])
        if failed:
            module.fail_json(msg="the kernel refused: %s; the file %s holds the values for the next boot"
                                 % (", ".join(failed), p["path"]), path=p["path"], changed=True)
    result = dict(changed=file_changed or bool(to_set), path=p["path"], live_changed=to_set,
                  file_changed=file_changed)
    if module._diff:
        result["diff"] = [
            dict(before=before_text or "", after=wanted_text, before_header=p["path"], after_header=p["path"]),
            dict(before="".join("%s = %s\n" % (n, current[n]) for n in to_set),
                 after="".join("%s = %s\n" % (n, normal(values[n])) for n in to_set),
                 before_header="live values", after_header="live values"),
        ]
    module.exit_json(**result)


if __name__ == "__main__":
    main()
