#!/usr/bin/python
# Copyright: Aegis contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: managed_files
short_description: Put several files and directories in their state in one call
version_added: 0.3.0
description:
  - Writes files with given content, creates directories, removes paths and sets owner,
    group and mode, for a whole list in one module run. A feature of a role that manages
    several small files (a PAM profile, a limits file, cron's allow lists) costs one round
    trip to the node instead of one per file, which is what makes a converge that changes
    nothing cheap.
  - Each entry is compared with the node first; only what differs is written, atomically
    (a temporary file in the same directory, then a rename).
  - Entries are handled in order, so a directory can come before the files in it.
options:
  files:
    description: The paths and the state each must be in.
    type: list
    elements: dict
    required: true
    suboptions:
      path:
        description: Absolute path.
        type: path
        required: true
      state:
        description:
          - V(file) writes O(files[].content); V(directory) creates the directory (not its
            parents); V(absent) removes a file, link or empty directory.
          - V(exists) only sets owner, group and mode of a path that exists (a file or a
            directory) and skips one that does not.
          - V(keys) sets O(files[].keys) in a C(KEY value) file the system already has
            (C(/etc/login.defs)), keeping its other lines. Each active line of a key gets
            the value; without one, the first commented-out line of the key is replaced;
            without either, the key is appended. Owner, group and mode stay as they are.
        type: str
        choices: [file, directory, absent, exists, keys]
        default: file
      content:
        description: The file's whole content; required with O(files[].state=file).
        type: str
      keys:
        description: Key to value, for O(files[].state=keys).
        type: dict
      separator:
        description: What goes between a key and its value on the lines O(files[].state=keys) writes.
        type: str
        default: "\t"
      validate:
        description:
          - A command that checks the new content before it replaces the file, with C(%s)
            standing for a temporary file holding it (C(/usr/sbin/sshd -t -f %s)). A failure
            leaves the file as it was and fails the task with the command's output; the
            entries before it stay done.
          - For V(file) and V(keys); runs only when the content changes (also in check mode).
        type: str
      mode:
        description:
          - Octal permission bits as a string, for example V('0644'). Required for
            V(file) and V(directory); for V(exists) it may be a map with keys V(file) and
            V(directory) to give each kind its own mode.
        type: raw
      owner:
        description: User name or uid.
        type: str
        default: root
      group:
        description: Group name or gid.
        type: str
        default: root
attributes:
  check_mode:
    support: full
    description: Computes what would change and the diffs without writing anything.
  diff_mode:
    support: full
    description: One diff per changed path (content, or the state and attributes).
  platform:
    support: full
    platforms: posix
    description: POSIX nodes (owner and group by name or id).
author:
  - Aegis contributors (@aegis)
"""

EXAMPLES = r"""
- name: Allow only root to use cron and at
  aegis.fleet.managed_files:
    files:
      - {path: /etc/cron.allow, content: "root\n", mode: "0600"}
      - {path: /etc/at.allow, content: "root\n", mode: "0600"}
      - {path: /etc/cron.deny, state: absent}
      - {path: /etc/at.deny, state: absent}
      - {path: /etc/cron.d, state: exists, mode: {directory: "0700", file: "0600"}}

- name: Password ageing in login.defs, and sshd_config checked by sshd before it is used
  aegis.fleet.managed_files:
    files:
      - path: /etc/login.defs
        state: keys
        keys: {PASS_MAX_DAYS: 90, ENCRYPT_METHOD: YESCRYPT}
      - path: /etc/ssh/sshd_config
        content: "{{ lookup('ansible.builtin.template', 'sshd_config.j2') }}"
        mode: "0600"
        validate: /usr/sbin/sshd -t -f %s

- name: A drop-in directory and its file
  aegis.fleet.managed_files:
    files:
      - {path: /etc/systemd/coredump.conf.d, state: directory, mode: "0755"}
      - path: /etc/systemd/coredump.conf.d/50-aegis.conf
        content: "[Coredump]\nStorage=none\n"
        mode: "0644"
"""

RETURN = r"""
changed_paths:
  description: The paths that changed (or would change in check mode), in the given order.
  returned: always
  type: list
  elements: str
  sample: [/etc/cron.allow]
"""

import grp
import os
import pwd
import shlex
import stat
import subprocess
import tempfile

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.aegis.fleet.plugins.module_utils.files import write_atomic
from ansible_collections.aegis.fleet.plugins.module_utils.key_lines import check_keys, set_keys

ARGUMENT_SPEC = dict(
    files=dict(type="list", elements="dict", required=True, options=dict(
        path=dict(type="path", required=True),
        state=dict(type="str", default="file", choices=["file", "directory", "absent", "exists", "keys"]),
        content=dict(type="str"),
        keys=dict(type="dict", no_log=False),
        separator=dict(type="str", default="\t"),
        validate=dict(type="str"),
        mode=dict(type="raw"),
        owner=dict(type="str", default="root"),
        group=dict(type="str", default="root"),
    )),
)


def parse_mode(value, where):
    """An octal mode string (``'0644'``) as an int; None for None; ValueError naming
    ``where`` otherwise."""
    if value is None:
        return None
    text = str(value)
    try:
        mode = int(text, 8)
    except ValueError:
        raise ValueError("%s: mode %r is not octal; quote it, e.g. '0644'" % (where, value)) from None
    if not 0 <= mode <= 0o7777:
        raise ValueError("%s: mode %r is out of range (0000-7777)" % (where, value))
    return mode


def _id(value, lookup, kind, where):
    if value.isdigit():
        return int(value)
    try:
        return lookup(value)
    except KeyError:
        raise ValueError("%s: %s %r does not exist on this node" % (where, kind, value)) from None


def plan(entry, index):
    """The wanted state of one entry (checked): a dict with path, state, content, modes
    (kind -> mode), uid, gid. ValueError names the entry and what to fix."""
    path = entry["path"]
    where = "files[%d] (%s)" % (index, path)
    if not os.path.isabs(path):
        raise ValueError("%s: the path must be absolute" % where)
    state = entry["state"]
    if state == "file" and entry.get("content") is None:
        raise ValueError("%s: state=file needs content" % where)
    if state != "file" and entry.get("content") is not None:
        raise ValueError("%s: content is only for state=file" % where)
    if state == "keys":
        if not entry.get("keys"):
            raise ValueError("%s: state=keys needs keys (KEY: value)" % where)
        problems = check_keys(entry["keys"], entry.get("separator", "\t"))
        if problems:
            raise ValueError("%s: %s" % (where, "; ".join(problems)))
        if entry.get("mode") is not None:
            raise ValueError("%s: state=keys keeps the file's mode; leave mode out" % where)
    elif entry.get("keys") is not None:
        raise ValueError("%s: keys are only for state=keys" % where)
    validate = entry.get("validate")
    if validate is not None:
        if state not in ("file", "keys"):
            raise ValueError("%s: validate is only for state=file and state=keys" % where)
        if "%s" not in validate:
            raise ValueError("%s: validate must contain %%s (the file to check), e.g. '/usr/sbin/sshd -t -f %%s'" % where)
    mode = entry.get("mode")
    if state == "exists" and isinstance(mode, dict):
        unknown = sorted(set(mode) - {"file", "directory"})
        if unknown:
            raise ValueError("%s: mode keys must be 'file' and 'directory', not %s" % (where, ", ".join(unknown)))
        modes = dict((k, parse_mode(v, where)) for k, v in mode.items())
    elif state == "keys":
        modes = {}
    else:
        if isinstance(mode, (dict, list)):
            raise ValueError("%s: mode must be an octal string such as '0644'" % where)
        if state in ("file", "directory") and mode is None:
            raise ValueError("%s: state=%s needs a mode, e.g. '0644'" % (where, state))
        parsed = parse_mode(mode, where)
        modes = {"file": parsed, "directory": parsed}
    keys = dict((k, str(int(v)) if isinstance(v, bool) else str(v)) for k, v in (entry.get("keys") or {}).items())
    wanted = dict(path=path, state=state, content=entry.get("content"), modes=modes, uid=None, gid=None,
                  keys=keys, separator=entry.get("separator", "\t"), validate=validate)
    if state not in ("absent", "keys"):
        wanted["uid"] = _id(entry["owner"], lambda n: pwd.getpwnam(n).pw_uid, "owner", where)
        wanted["gid"] = _id(entry["group"], lambda n: grp.getgrnam(n).gr_gid, "group", where)
    return wanted


def _describe(st):
    """A path's state as text for a diff (kind, owner, group, mode)."""
    if st is None:
        return "absent\n"
    kind = "directory" if stat.S_ISDIR(st.st_mode) else "file" if stat.S_ISREG(st.st_mode) else "other"
    return "%s uid=%d gid=%d mode=%04o\n" % (kind, st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode))


def _read(path):
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except (FileNotFoundError, IsADirectoryError):
        return None


def _lstat(path):
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _attrs_differ(st, uid, gid, mode):
    return (st.st_uid != uid or st.st_gid != gid
            or (mode is not None and stat.S_IMODE(st.st_mode) != mode))


def converge(wanted, check_mode):
    """Bring one path to ``wanted``; returns None when nothing changed (or would), else the
    diff dict. Writes nothing in check mode."""
    path, state = wanted["path"], wanted["state"]
    st = _lstat(path)
    header = path
    if state == "absent":
        if st is None:
            return None
        if not check_mode:
            if stat.S_ISDIR(st.st_mode):
                os.rmdir(path)
            else:
                os.unlink(path)
        return dict(before=_describe(st), after="absent\n", before_header=header, after_header=header)
    uid, gid = wanted["uid"], wanted["gid"]
    if state == "exists":
        if st is None:
            return None
        mode = wanted["modes"].get("directory" if stat.S_ISDIR(st.st_mode) else "file")
        if not _attrs_differ(st, uid, gid, mode):
            return None
        if not check_mode:
            os.chown(path, uid, gid, follow_symlinks=False)
            if mode is not None and not stat.S_ISLNK(st.st_mode):
                os.chmod(path, mode)
        kind = "directory" if stat.S_ISDIR(st.st_mode) else "file" if stat.S_ISREG(st.st_mode) else "other"
        after = "%s uid=%d gid=%d mode=%04o\n" % (kind, uid, gid, stat.S_IMODE(st.st_mode) if mode is None else mode)
        return dict(before=_describe(st), after=after, before_header=header, after_header=header)
    if state == "keys":
        return _converge_keys(wanted, st, check_mode)
    mode = wanted["modes"]["file" if state == "file" else "directory"]
    if state == "directory":
        if st is not None and not stat.S_ISDIR(st.st_mode):
            raise ValueError("%s exists and is not a directory; remove it first" % path)
        if st is not None and not _attrs_differ(st, uid, gid, mode):
            return None
        if not check_mode:
            if st is None:
                os.mkdir(path, mode)
            os.chown(path, uid, gid)
            os.chmod(path, mode)
        return dict(before=_describe(st), after="directory uid=%d gid=%d mode=%04o\n" % (uid, gid, mode),
                    before_header=header, after_header=header)
    content = wanted["content"].encode()
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise ValueError("%s exists and is not a regular file; remove it first" % path)
    old = _read(path) if st is not None else None
    if old == content and not _attrs_differ(st, uid, gid, mode):
        return None
    if old != content and wanted["validate"]:
        _validate(wanted["validate"], content, path)
    if not check_mode:
        directory = os.path.dirname(path)
        if not os.path.isdir(directory):
            raise ValueError("%s: the directory %s does not exist; add it before this entry with "
                             "state=directory" % (path, directory))
        write_atomic(path, content, mode, uid, gid)
    if old == content:
        return dict(before=_describe(st), after="file uid=%d gid=%d mode=%04o\n" % (uid, gid, mode),
                    before_header=header, after_header=header)
    return dict(before="" if old is None else old.decode("utf-8", "replace"), after=wanted["content"],
                before_header=header, after_header=header)


def _validate(command, content, path):
    """Run ``command`` (``%s`` = a private temporary file holding ``content``); ValueError
    with its output when it fails."""
    fd, tmp = tempfile.mkstemp(prefix=".aegis-validate-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(content)
        argv = [tmp if arg == "%s" else arg.replace("%s", tmp) for arg in shlex.split(command)]
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
    finally:
        os.unlink(tmp)
    if proc.returncode != 0:
        raise ValueError("validated with '%s', the new content is refused (rc %d; the file is unchanged): %s"
                         % (command, proc.returncode, (proc.stderr or proc.stdout).strip().replace(tmp, path)))


def _converge_keys(wanted, st, check_mode):
    """``state: keys``: set the keys in a file that exists, keeping its other lines,
    owner, group and mode."""
    path = wanted["path"]
    if st is None or not stat.S_ISREG(st.st_mode):
        raise ValueError("state=keys edits a file the system already has, and there is none")
    old = _read(path)
    text = old.decode("utf-8", "replace")
    new, changed = set_keys(text, wanted["keys"], wanted["separator"])
    if not changed:
        return None
    if wanted["validate"]:
        _validate(wanted["validate"], new.encode(), path)
    if not check_mode:
        write_atomic(path, new.encode(), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
    return dict(before=text, after=new, before_header=path, after_header=path)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    try:
        wanted = [plan(entry, i) for i, entry in enumerate(module.params["files"])]
    except ValueError as err:
        module.fail_json(msg="Nothing was changed: %s" % err)
    seen = set()
    for w in wanted:
        if w["path"] in seen:
            module.fail_json(msg="Nothing was changed: %s is listed twice; give each path once" % w["path"])
        seen.add(w["path"])
    changed, diffs = [], []
    for w in wanted:
        try:
            diff = converge(w, module.check_mode)
        except (OSError, ValueError) as err:
            module.fail_json(msg="%s: %s" % (w["path"], err), changed_paths=changed, changed=bool(changed))
        if diff is not None:
            changed.append(w["path"])
            diffs.append(diff)
    result = dict(changed=bool(changed), changed_paths=changed)
    if module._diff:
        result["diff"] = diffs
    module.exit_json(**result)


if __name__ == "__main__":
    main()
