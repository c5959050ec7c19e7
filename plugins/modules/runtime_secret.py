#!/usr/bin/python
# Copyright: Aegis contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: runtime_secret
short_description: Put a secret in a file on tmpfs without it touching disk on the way
version_added: 0.1.0
description:
  - Writes O(content) (a one-time token, a wrapping token) to O(dest), which must be on a
    memory filesystem (tmpfs or ramfs, for example C(/run)); any other filesystem is refused
    before anything is written.
  - The secret never passes through a file on disk, on the control node or on the managed
    node. Unlike M(ansible.builtin.copy) with C(content), which writes the content to a
    temporary file on the control node and transfers it into the remote temporary directory,
    this module takes the secret as a module argument, and its action plugin runs only when
    pipelining is in effect for the task, so the arguments travel in the connection's
    standard input and no module file is left in a remote temporary directory. Set
    C(ansible_pipelining=true) on the task; the action refuses to run otherwise (also with
    C(ANSIBLE_KEEP_REMOTE_FILES), async, or a connection that cannot pipeline).
  - The file is created next to O(dest) on the same memory filesystem and renamed into place;
    a symbolic link at O(dest) or in place of its directory's last component is refused.
  - Idempotent by comparing the SHA-256 digest of the file's content with that of O(content),
    and its mode and owner.
options:
  dest:
    description:
      - Absolute path of the file. Its directory must exist and be on tmpfs or ramfs.
    type: path
    required: true
  content:
    description:
      - The secret. It is never logged, never shown in a diff and never returned.
    type: str
    required: true
  mode:
    description:
      - Permissions of the file, as an octal string.
    type: str
    default: "0600"
  owner:
    description:
      - User that owns the file.
    type: str
    default: root
  group:
    description:
      - Group of the file.
    type: str
    default: root
attributes:
  action:
    support: full
    description: The action plugin of the same name refuses to run unless the task is pipelined.
  check_mode:
    support: full
    description: Reports whether the file would change; writes nothing.
  diff_mode:
    support: full
    description: Shows the file's mode and owner before and after; the content shows as C(content hidden).
  platform:
    support: full
    platforms: posix
    description: Linux nodes (the filesystem type is read with statfs).
notes:
  - Connections that cannot pipeline (for example C(containers.podman.podman)) cannot deliver a secret
    with this module.
author:
  - Aegis contributors (@aegis)
"""

EXAMPLES = r"""
- name: Hand a one-time bootstrap token to the agent (tmpfs only)
  aegis.fleet.runtime_secret:
    dest: /run/aegis/bootstrap-token
    content: "{{ agent_bootstrap_token }}\n"
    mode: "0600"
  vars:
    ansible_pipelining: true
  no_log: true
"""

RETURN = r"""
dest:
  description: The file.
  returned: always
  type: str
  sample: /run/aegis/bootstrap-token
fstype:
  description: The memory filesystem the file is on.
  returned: always
  type: str
  sample: tmpfs
mode:
  description: The file's permissions.
  returned: always
  type: str
  sample: "0600"
"""

import contextlib
import errno
import grp
import hashlib
import hmac
import os
import pwd
import stat

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.aegis.fleet.plugins.module_utils.changes import report
from ansible_collections.aegis.fleet.plugins.module_utils.memfs import MEMORY_FS, fs_type

ARGUMENT_SPEC = dict(
    dest=dict(type="path", required=True),
    content=dict(type="str", required=True, no_log=True),
    mode=dict(type="str", default="0600"),
    owner=dict(type="str", default="root"),
    group=dict(type="str", default="root"),
)


def _describe(st):
    if st is None:
        return ""
    owner = _name(pwd.getpwuid, st.st_uid)
    group = _name(grp.getgrgid, st.st_gid)
    return "content hidden\nmode %04o, owner %s:%s\n" % (stat.S_IMODE(st.st_mode), owner, group)


def _name(lookup, ident):
    try:
        return lookup(ident)[0]
    except KeyError:
        return str(ident)


class Secret:
    def __init__(self, module):
        self.module = module
        p = module.params
        self.dest = p["dest"]
        self.content = p["content"].encode("utf-8")
        self.mode = self._mode(p["mode"])
        self.uid = self._id(pwd.getpwnam, p["owner"], "owner")
        self.gid = self._id(grp.getgrnam, p["group"], "group")

    def _mode(self, text):
        try:
            mode = int(text, 8)
        except ValueError:
            mode = -1
        if not 0 <= mode <= 0o7777:
            self.module.fail_json(msg="mode: %r is not an octal file mode; write e.g. '0600'" % text)
        if mode & 0o077:
            self.module.fail_json(msg="mode: %s lets group or others read the secret; use 0600 or 0400" % text)
        return mode

    def _id(self, lookup, name, what):
        try:
            return lookup(name)[2]
        except KeyError:
            self.module.fail_json(msg="%s: %r does not exist on the node" % (what, name))

    def open_dir(self):
        """The dest's directory, opened without following a symlink in its last component,
        and checked to be a memory filesystem (on the descriptor that is then used)."""
        if not os.path.isabs(self.dest) or self.dest.endswith("/"):
            self.module.fail_json(msg="dest: %r must be an absolute file path, e.g. /run/aegis/token" % self.dest)
        parent, self.name = os.path.split(self.dest)
        try:
            dfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            self.module.fail_json(msg="dest: cannot open its directory %s (%s); create it first (on tmpfs)"
                                      % (parent, exc.strerror))
        kind = fs_type(dfd)
        if kind not in MEMORY_FS:
            os.close(dfd)
            self.module.fail_json(
                msg="dest: %s is not on a memory filesystem (statfs type 0x%x): a secret written there "
                    "would reach the disk. Put it under a tmpfs such as /run. Nothing was written."
                    % (self.dest, kind), fstype="0x%x" % kind)
        self.fstype = MEMORY_FS[kind]
        return dfd

    def current(self, dfd):
        """(stat, matches) of the existing file, or (None, False)."""
        try:
            fd = os.open(self.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dfd)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return None, False
            if exc.errno == errno.ELOOP:
                self.module.fail_json(msg="dest: %s is a symbolic link; refusing to write a secret through it"
                                          % self.dest)
            raise
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                self.module.fail_json(msg="dest: %s exists and is not a regular file" % self.dest)
            digest = hashlib.sha256()
            while True:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                digest.update(chunk)
        finally:
            os.close(fd)
        same = hmac.compare_digest(digest.digest(), hashlib.sha256(self.content).digest())
        return st, same

    def write(self, dfd):
        """Write to a new file on the same filesystem, then rename it over dest."""
        tmp = ".%s.%s.tmp" % (self.name, os.urandom(6).hex())
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=dfd)
        try:
            os.fchown(fd, self.uid, self.gid)
            os.fchmod(fd, self.mode)
            view = memoryview(self.content)
            while view:
                view = view[os.write(fd, view):]
            os.close(fd)
            fd = -1
            os.rename(tmp, self.name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            raise


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    secret = Secret(module)
    dfd = secret.open_dir()
    try:
        st, same = secret.current(dfd)
        before = _describe(st)
        ok = (same and stat.S_IMODE(st.st_mode) == secret.mode
              and (st.st_uid, st.st_gid) == (secret.uid, secret.gid))
        after = ("content hidden\nmode %04o, owner %s:%s\n"
                 % (secret.mode, module.params["owner"], module.params["group"]))
        if not ok:
            if st is not None and not same:
                before = before.replace("content hidden", "content hidden (differs)", 1)
            if not module.check_mode:
                secret.write(dfd)
        else:
            after = before
    finally:
        os.close(dfd)
    report(module, before, after, secret.dest, dest=secret.dest, fstype=secret.fstype,
           mode="%04o" % secret.mode)


if __name__ == "__main__":
    main()
