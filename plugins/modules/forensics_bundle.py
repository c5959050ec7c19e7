#!/usr/bin/python
# Copyright: Aegis contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: forensics_bundle
short_description: Collect a node's forensic evidence, encrypted with age on the node
version_added: 0.1.0
description:
  - Collects, on the node, what an incident responder needs before the node is replaced,
    that is the process list (from C(/proc)), the sockets (C(ss -tanpu), or C(/proc/net) without
    C(ss)), the Aegis agent's recent events (C(aegis-agent events)), a journal excerpt
    (C(journalctl -o short-iso)) and the SHA-256 of every file that differs from the golden
    record C(/var/lib/aegis/golden.json) written by aegis.fleet.harden.
  - Packs them as a tar in memory, encrypts it with age (C(pyrage)) to O(recipient) and
    writes only the ciphertext, 0600, to O(dest_dir), which must be on a memory filesystem
    (tmpfs, ramfs), so the plaintext never touches a disk and only the recipient's identity
    can read the bundle. The play then fetches it (see playbook C(aegis.fleet.forensics))
    and removes it.
  - A collection is not idempotent; every run takes a new bundle and reports a change.
  - A missing or malformed O(recipient) fails before anything is collected.
  - C(pyrage) must be importable by the module's Python, so run it with the agent's
    virtualenv (C(ansible_python_interpreter=/opt/aegis/agent/bin/python)), where
    aegis.fleet.agent installs it.
options:
  recipient:
    description:
      - The incident-response age X25519 public key, C(age1...) (62 characters). Make a
        pair with C(age-keygen -o ir.key), or C(pyrage.x25519.Identity.generate()).
    type: str
    required: true
  incident:
    description: A label for the incident, part of the file name and recorded in the bundle.
    type: str
    default: manual
  dest_dir:
    description: Where the ciphertext is written (created 0700); must be tmpfs or ramfs.
    type: path
    default: /run/aegis-forensics
  events_limit:
    description: How many of the agent's most recent events to take.
    type: int
    default: 1000
  journal_lines:
    description: How many of the journal's most recent lines to take.
    type: int
    default: 2000
  golden_file:
    description: The golden record to compare files with.
    type: path
    default: /var/lib/aegis/golden.json
  agent_command:
    description: The agent's CLI.
    type: path
    default: /opt/aegis/agent/bin/aegis-agent
attributes:
  check_mode:
    support: none
    description: A collection has nothing to predict; the module refuses check mode rather than pretend.
  diff_mode:
    support: none
    description: A new bundle has no before state to compare with.
  platform:
    support: full
    platforms: posix
    description: Linux nodes with systemd.
requirements:
  - pyrage (installed in the Aegis agent's virtualenv by aegis.fleet.agent)
notes:
  - Members that cannot be collected (no agent, no journal) are replaced by a note in
    C(errors.json) inside the bundle; the bundle is still made.
seealso:
  - module: aegis.fleet.quarantine
author:
  - Aegis contributors (@aegis)
"""

EXAMPLES = r"""
- name: Collect the evidence, encrypted to the IR key
  aegis.fleet.forensics_bundle:
    recipient: age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p
    incident: inc-42
  vars:
    ansible_python_interpreter: /opt/aegis/agent/bin/python
  register: aegis_bundle
"""

RETURN = r"""
path:
  description: The ciphertext on the node (age, binary).
  returned: success
  type: str
  sample: /run/aegis-forensics/inc-42-20260101T120000Z.tar.age
sha256:
  description: SHA-256 of the ciphertext.
  returned: success
  type: str
  sample: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
bytes:
  description: Size of the ciphertext.
  returned: success
  type: int
  sample: 48213
contents:
  description: The names of the members of the (encrypted) tar.
  returned: success
  type: list
  elements: str
  sample: [collection.json, processes.json, sockets.txt, agent-events.jsonl, journal.txt, golden-diff.json]
collected_at:
  description: When the collection started (UTC, ISO 8601).
  returned: success
  type: str
  sample: "2026-01-01T12:00:00Z"
errors:
  description: What could not be collected, by member name.
  returned: success
  type: dict
  sample: {agent-events.jsonl: "the agent is not running"}
"""

import hashlib
import io
import json
import os
import re
import socket
import sys
import tarfile
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.aegis.fleet.plugins.module_utils.memfs import MEMORY_FS, fs_type
from ansible_collections.aegis.fleet.plugins.module_utils.recovery import (
    golden_diff,
    process_list,
    recipient_problem,
)

try:
    import pyrage
except ImportError:
    pyrage = None

ARGUMENT_SPEC = dict(
    recipient=dict(type="str", required=True),
    incident=dict(type="str", default="manual"),
    dest_dir=dict(type="path", default="/run/aegis-forensics"),
    events_limit=dict(type="int", default=1000),
    journal_lines=dict(type="int", default=2000),
    golden_file=dict(type="path", default="/var/lib/aegis/golden.json"),
    agent_command=dict(type="path", default="/opt/aegis/agent/bin/aegis-agent"),
)
LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def pack(members, mtime):
    """An uncompressed tar of ``members`` (name -> bytes), built in memory, 0600 root files."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), int(mtime), 0o600
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class Collector:
    def __init__(self, module):
        self.module = module
        self.errors = {}

    def run(self, argv, name):
        """stdout of a command (kept in memory), or None with the reason in ``errors``."""
        if not os.path.exists(argv[0]):
            found = self.module.get_bin_path(argv[0])
            if not found:
                self.errors[name] = "%s is not installed" % argv[0]
                return None
            argv = [found, *argv[1:]]
        rc, out, err = self.module.run_command(argv, encoding=None)
        if rc != 0:
            self.errors[name] = "%s exited %d: %s" % (os.path.basename(argv[0]), rc,
                                                      (err or b"").decode("utf-8", "replace").strip()[-500:])
            return None
        return out

    def sockets(self):
        out = self.run(["ss", "-tanpu"], "sockets.txt")
        if out is not None:
            return out
        parts = []
        for proto in ("tcp", "tcp6", "udp", "udp6"):
            try:
                with open("/proc/net/" + proto, "rb") as fh:
                    parts.append(b"# /proc/net/" + proto.encode() + b"\n" + fh.read())
            except OSError:
                pass
        return b"".join(parts)

    def golden(self, path):
        try:
            with open(path) as fh:
                record = json.load(fh)
        except FileNotFoundError:
            self.errors["golden-diff.json"] = "no golden record at %s (aegis.fleet.harden writes it)" % path
            return []
        except ValueError as e:
            self.errors["golden-diff.json"] = "%s is not JSON: %s" % (path, e)
            return []
        try:
            return golden_diff(record)
        except ValueError as e:
            self.errors["golden-diff.json"] = "%s: %s" % (path, e)
            return []


def open_dest(module, path):
    """Create (0700) and open the destination directory; fail unless it is tmpfs or ramfs."""
    if not os.path.isabs(path):
        module.fail_json(msg="dest_dir: %r must be an absolute path under a tmpfs such as /run" % path)
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        module.fail_json(msg="dest_dir: cannot create or open %s (%s)" % (path, e.strerror))
    kind = fs_type(dfd)
    if kind not in MEMORY_FS:
        os.close(dfd)
        module.fail_json(msg="dest_dir: %s is not on a memory filesystem (statfs type 0x%x); put the "
                             "bundle under a tmpfs such as /run. Nothing was collected." % (path, kind))
    os.fchmod(dfd, 0o700)
    return dfd


def write_new(dfd, name, data):
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                 dir_fd=dfd)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=False)
    p = module.params
    problem = recipient_problem(p["recipient"])
    if problem:
        module.fail_json(msg="recipient: %s. Nothing was collected." % problem)
    if not LABEL.match(p["incident"]):
        module.fail_json(msg="incident: %r must be 1-64 letters, digits, '.', '_' or '-' (it names the file)"
                             % p["incident"])
    for opt in ("events_limit", "journal_lines"):
        if not 1 <= p[opt] <= 100000:
            module.fail_json(msg="%s: %d is outside 1-100000" % (opt, p[opt]))
    if pyrage is None:
        module.fail_json(msg="pyrage is not importable by %s: run this module with the agent's virtualenv "
                             "(ansible_python_interpreter=/opt/aegis/agent/bin/python), where aegis.fleet.agent "
                             "installs it. Nothing was collected." % sys.executable)
    try:
        recipient = pyrage.x25519.Recipient.from_str(p["recipient"].strip().lower())
    except Exception as e:  # pyrage raises its own error types
        module.fail_json(msg="recipient: pyrage refuses it (%s). Nothing was collected." % e)
    dfd = open_dest(module, p["dest_dir"])

    started = time.time()
    collected_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started))
    c = Collector(module)
    members = {}
    members["processes.json"] = json.dumps(process_list(), indent=1).encode()
    members["sockets.txt"] = c.sockets()
    events = c.run([p["agent_command"], "events", "--limit", str(p["events_limit"])], "agent-events.jsonl")
    members["agent-events.jsonl"] = events if events is not None else b""
    journal = c.run(["journalctl", "--no-pager", "-n", str(p["journal_lines"]), "-o", "short-iso"], "journal.txt")
    members["journal.txt"] = journal if journal is not None else b""
    members["golden-diff.json"] = json.dumps(c.golden(p["golden_file"]), indent=1).encode()
    members["errors.json"] = json.dumps(c.errors, indent=1, sort_keys=True).encode()
    meta = {"schema": "aegis.forensics/v1", "node": socket.gethostname(), "incident": p["incident"],
            "collected_at": collected_at, "seconds": round(time.time() - started, 3),
            "members": sorted(members)}
    members = {"collection.json": json.dumps(meta, indent=1).encode(), **members}
    names = list(members)
    plain = pack(members, started)
    cipher = pyrage.encrypt(plain, [recipient])
    del plain, members

    name = "%s-%s.tar.age" % (p["incident"], time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started)))
    try:
        write_new(dfd, name, cipher)
    except FileExistsError:
        name = "%s-%s-%s.tar.age" % (p["incident"], time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started)),
                                     os.urandom(3).hex())
        write_new(dfd, name, cipher)
    finally:
        os.close(dfd)
    module.exit_json(changed=True, path=os.path.join(p["dest_dir"], name),
                     sha256=hashlib.sha256(cipher).hexdigest(), bytes=len(cipher),
                     contents=names,
                     collected_at=collected_at, errors=c.errors)


if __name__ == "__main__":
    main()
