#!/usr/bin/python
# Copyright: Aegis contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: golden_record
short_description: Measure what the hardening role manages and record it for attestation
version_added: 0.3.0
description:
  - Hashes (SHA-256) the files of O(files) and reads the baseline sysctls, and writes the
    golden record O(path) (schema C(aegis.golden/v1)) that the node agent's attestation
    compares the node with. Measuring and recording are one module run.
  - The record is rewritten only when a measurement changed.
options:
  path:
    description: The golden record file; its directory is created (mode 0700) when missing.
    type: path
    default: /var/lib/aegis/golden.json
  files:
    description: Files to hash; a missing file is recorded as null.
    type: list
    elements: path
    required: true
  role:
    description: The role that converged the node, recorded as C(role).
    type: str
    default: aegis.fleet.harden
attributes:
  check_mode:
    support: full
    description: Measures and reports whether the record would change; writes nothing.
  diff_mode:
    support: full
    description: The record before and after.
  platform:
    support: full
    platforms: posix
    description: Linux nodes (the baseline sysctls are read from /proc/sys).
author:
  - Aegis contributors (@aegis)
"""

EXAMPLES = r"""
- name: Record the golden measurements
  aegis.fleet.golden_record:
    files: [/etc/ssh/sshd_config, /etc/nftables.conf]
"""

RETURN = r"""
record:
  description: The golden record as written (or as it would be written in check mode).
  returned: always
  type: dict
  sample: {"schema": "aegis.golden/v1", "role": "aegis.fleet.harden", "files": {"/etc/nftables.conf": "9f86d0..."},
           "sysctl": {"net.ipv4.tcp_syncookies": "1"}}
"""

import json
import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.aegis.fleet.plugins.module_utils.files import (
    read_text,
    sha256_file,
    write_atomic,
)
from ansible_collections.aegis.fleet.plugins.module_utils.sysctl_values import (
    DEFAULT_SYSCTLS,
    read_sysctls,
)

SCHEMA = "aegis.golden/v1"
ARGUMENT_SPEC = dict(
    path=dict(type="path", default="/var/lib/aegis/golden.json"),
    files=dict(type="list", elements="path", required=True),
    role=dict(type="str", default="aegis.fleet.harden"),
)


def measure(files, role):
    """The record: the files' digests and the baseline sysctls' values."""
    return {
        "schema": SCHEMA,
        "role": role,
        "files": dict((path, sha256_file(path)) for path in files),
        "sysctl": read_sysctls(DEFAULT_SYSCTLS),
    }


def render(record):
    """The file's text: sorted, indented JSON (what attestation and forensics read)."""
    return json.dumps(record, indent=4, sort_keys=True) + "\n"


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    p = module.params
    bad = [f for f in p["files"] if not os.path.isabs(f)]
    if bad:
        module.fail_json(msg="files: %s not absolute paths" % ", ".join(map(repr, bad)))
    record = measure(p["files"], p["role"])
    after = render(record)
    before = read_text(p["path"])
    changed = before != after
    if changed and not module.check_mode:
        directory = os.path.dirname(p["path"])
        os.makedirs(directory, mode=0o700, exist_ok=True)
        write_atomic(p["path"], after.encode(), 0o600)
    result = dict(changed=changed, record=record)
    if module._diff:
        result["diff"] = dict(before=before or "", after=after, before_header=p["path"], after_header=p["path"])
    module.exit_json(**result)


if __name__ == "__main__":
    main()
