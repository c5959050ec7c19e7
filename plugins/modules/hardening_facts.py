#!/usr/bin/python
# Copyright: Aegis contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: hardening_facts
short_description: The node's security posture as facts
version_added: 0.1.0
description:
  - Reads, never changes, what aegis.fleet.harden manages and attestation measures, and
    returns it as C(ansible_facts.aegis_hardening).
  - Detects container nodes, where kernel-global sysctls belong to the host and are read-only.
options:
  sysctls:
    description: Sysctl names to read. Defaults to the hardening baseline's list.
    type: list
    elements: str
  measure:
    description: Files to hash (SHA-256) for the golden record; a missing file is reported as null.
    type: list
    elements: path
    default: []
  units:
    description: Units to score with C(systemd-analyze security); units the node lacks are skipped.
    type: list
    elements: str
    default: []
  packages:
    description:
      - Debian packages whose installed state to report (one C(dpkg-query) for all of them),
        so a role can check that what it needs is in the node image without a mirror.
    type: list
    elements: str
    default: []
  pam:
    description: Files of C(/etc/pam.d) whose modules to list (RV(ansible_facts.aegis_hardening.pam)).
    type: list
    elements: str
    default: []
  expect_sysctls:
    description:
      - Sysctl name to the value a role wants; RV(ansible_facts.aegis_hardening.sysctl_drift)
        lists the names whose live value differs (compared as the kernel prints them), or
        that the kernel lacks.
    type: dict
    default: {}
  unit_states:
    description:
      - Units whose state to read (one C(systemctl show) for all); RV(ansible_facts.aegis_hardening.unit_states)
        gives each one's load, active and enablement state. A role reads this instead of
        C(ansible.builtin.service_facts), which lists every unit of the node and costs seconds.
    type: list
    elements: str
    default: []
attributes:
  check_mode:
    support: full
    description: Only reads, so it runs the same in check mode.
  diff_mode:
    support: none
    description: Nothing changes, so there is nothing to diff.
  facts:
    support: full
    description: Returns C(ansible_facts.aegis_hardening).
  platform:
    support: full
    platforms: posix
    description: Debian-family Linux nodes with systemd.
author:
  - Aegis contributors (@aegis)
"""

EXAMPLES = r"""
- name: Read the posture
  aegis.fleet.hardening_facts:

- name: Hash files for the golden record
  aegis.fleet.hardening_facts:
    measure: [/etc/ssh/sshd_config, /etc/nftables.conf]
    units: [cron.service]

- name: Skip kernel settings where they are the host's
  ansible.builtin.debug:
    msg: "kernel-global sysctls are read-only here"
  when: not ansible_facts.aegis_hardening.kernel_sysctls_writable
"""

RETURN = r"""
ansible_facts:
  description: Facts added under C(aegis_hardening).
  returned: always
  type: complex
  contains:
    aegis_hardening:
      description: The posture.
      returned: always
      type: dict
      contains:
        virtualization:
          description: What C(systemd-detect-virt) says (V(none) on bare metal).
          type: str
          sample: podman
        container:
          description: Whether the node is a container.
          type: bool
        kernel_sysctls_writable:
          description: Whether kernel-global sysctls can be set here (false in container nodes).
          type: bool
        sysctl:
          description: Sysctl name to value; null where the node has no such setting.
          type: dict
          sample: {"net.ipv4.tcp_syncookies": "1"}
        sshd:
          description: Effective sshd configuration from C(sshd -T) (keyword to value; repeated keywords as lists).
          type: dict
        nftables:
          description: Table (C(FAMILY NAME)) to SHA-256 of its listing without counter values.
          type: dict
        mounts:
          description: Mount options of /tmp, /var/tmp and /dev/shm (only those that are mount points).
          type: dict
          sample: {"/tmp": {"fstype": "tmpfs", "options": ["rw", "nosuid", "nodev", "noexec"]}}
        fstab:
          description:
            - The C(/etc/fstab) entry of /tmp, /var/tmp, /dev/shm and /proc (source, mount point, type,
              options, dump, pass; the last two C(0) when left out), for those that have one.
          type: dict
          sample: {"/tmp": ["tmpfs", "/tmp", "tmpfs", "nodev,nosuid,noexec,mode=1777,size=512M", "0", "0"]}
        measurements:
          description: Path to SHA-256 for O(measure).
          type: dict
        unit_exposure:
          description: Unit to overall exposure for O(units).
          type: dict
        package_lock:
          description: Whether the immutable package lock hook is installed.
          type: bool
        packages:
          description: Package name to whether it is installed, for O(packages).
          type: dict
          sample: {"acct": true, "sysstat": false}
        pam:
          description: File of O(pam) to the PAM modules it names, in order (empty for a missing file).
          type: dict
          sample: {"common-session": ["pam_permit.so", "pam_unix.so", "pam_systemd.so", "pam_tmpdir.so"]}
        unit_states:
          description:
            - Unit to its state, for O(unit_states). C(load) is systemd's LoadState
              (V(loaded), V(not-found), V(masked)), C(active) its ActiveState and
              C(enabled) its UnitFileState (empty when the unit has no unit file).
          type: dict
          sample: {"cron.service": {"load": "loaded", "active": "active", "enabled": "enabled"}}
        sysctl_drift:
          description: Names of O(expect_sysctls) whose live value differs from the wanted one.
          type: list
          elements: str
          sample: [net.ipv4.conf.all.rp_filter]
        ssh_client:
          description:
            - The address the managing SSH connection comes from (from C(SSH_CLIENT)), empty
              when the module does not run over SSH. What the nftables baseline must keep open.
          type: str
          sample: 10.213.4.1
        ssh_login:
          description:
            - The account the managing connection logged in as (C(SUDO_USER) when the module
              runs through sudo, else the module's own user) and its groups, primary group
              first. What sshd's C(AllowGroups) must keep admitting.
          type: dict
          sample: {"user": "root", "groups": ["root"]}
"""

import grp
import hashlib
import json
import os
import pwd
import re

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.aegis.fleet.plugins.module_utils.files import sha256_file
from ansible_collections.aegis.fleet.plugins.module_utils.nftables import normalise
from ansible_collections.aegis.fleet.plugins.module_utils.sandbox import exposure, valid_unit_name
from ansible_collections.aegis.fleet.plugins.module_utils.sysctl_values import (
    DEFAULT_SYSCTLS,
    normal,
    read_sysctls,
)
from ansible_collections.aegis.fleet.plugins.module_utils.systemd import Systemd

TEMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm")
#: mount points whose fstab entry is reported (the temporary directories, and /proc for hidepid)
FSTAB_POINTS = (*TEMP_DIRS, "/proc")
PACKAGE_LOCK_HOOK = "/etc/dpkg/dpkg.cfg.d/aegis-package-lock"
ARGUMENT_SPEC = dict(
    sysctls=dict(type="list", elements="str"),
    measure=dict(type="list", elements="path", default=[]),
    units=dict(type="list", elements="str", default=[]),
    packages=dict(type="list", elements="str", default=[]),
    pam=dict(type="list", elements="str", default=[]),
    unit_states=dict(type="list", elements="str", default=[]),
    expect_sysctls=dict(type="dict", default={}),
)
PAM_DIR = "/etc/pam.d"
ANY_UNIT = re.compile(r"^[A-Za-z0-9:_.\\@-]+\.(service|socket|timer|target|path|mount|automount|swap|slice|scope|device)$")
PACKAGE_NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")


def parse_sshd(text):
    conf = {}
    for line in text.splitlines():
        key, _sep, value = line.strip().partition(" ")
        if not key:
            continue
        if key in conf:
            conf[key] = (conf[key] if isinstance(conf[key], list) else [conf[key]]) + [value]
        else:
            conf[key] = value
    return conf


def fstab_entries(text, targets):
    """Mount point -> its first fstab entry's six fields, for ``targets``."""
    found = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 4 or fields[0].startswith("#") or fields[1] not in targets or fields[1] in found:
            continue
        found[fields[1]] = [*fields, "0", "0"][:6]
    return found


def mount_points(mountinfo_text, targets):
    found = {}
    for line in mountinfo_text.splitlines():
        fields = line.split()
        if len(fields) < 10 or "-" not in fields:
            continue
        sep = fields.index("-")
        target = fields[4]
        if target in targets:
            options = fields[5].split(",") + [o for o in fields[sep + 3].split(",") if o in ("nodev", "nosuid", "noexec")]
            found[target] = {"fstype": fields[sep + 1], "options": sorted(set(options), key=options.index)}
    return found


def kernel_writable(proc_sys_kernel="/proc/sys/kernel"):
    """Whether kernel-global sysctls can be set: false where /proc/sys/kernel is mounted
    read-only (a container node, whose kernel settings are the host's)."""
    try:
        if os.statvfs(proc_sys_kernel).f_flag & os.ST_RDONLY:
            return False
    except OSError:
        return False
    return os.access(os.path.join(proc_sys_kernel, "dmesg_restrict"), os.W_OK)


def installed_packages(module, names):
    """Package -> whether dpkg has it installed (one dpkg-query for all names)."""
    state = dict((name, False) for name in names)
    dpkg_query = module.get_bin_path("dpkg-query")
    if names and dpkg_query:
        # unknown names make dpkg-query exit 1 but still print the known ones
        fmt = "${Package} ${db:Status-Abbrev}\\n"
        _rc, out, _err = module.run_command([dpkg_query, "-W", "-f", fmt, *names])
        for line in out.splitlines():
            fields = line.split()
            if len(fields) >= 2 and fields[0].split(":")[0] in state and fields[1].startswith("ii"):
                state[fields[0].split(":")[0]] = True
    return state


def pam_modules(path):
    """The modules a PAM file names, in order ([] without the file)."""
    try:
        with open(path) as fh:
            lines = fh.read().splitlines()
    except OSError:
        return []
    modules = []
    for line in lines:
        # TYPE CONTROL MODULE ARGS; a [bracketed control] may hold spaces
        fields = line.split("#", 1)[0].split()
        name = next((f for f in fields[1:] if f.endswith(".so")), None)
        if name:
            modules.append(name)
    return modules


def check_params(module):
    """Fail with a message naming the option unless units and sysctls are names."""
    p = module.params
    bad = [u for u in p["units"] if not valid_unit_name(u)]
    if bad:
        module.fail_json(msg="units: %s not full unit names; write e.g. 'cron.service'" % ", ".join(map(repr, bad)))
    bad = [u for u in p["unit_states"] if not ANY_UNIT.match(u) or ".." in u]
    if bad:
        module.fail_json(msg="unit_states: %s not full unit names; write e.g. 'cron.service'" % ", ".join(map(repr, bad)))
    bad = [name for name in p["packages"] if not PACKAGE_NAME.match(name)]
    if bad:
        module.fail_json(msg="packages: %s not Debian package names (lower case, e.g. 'libpam-tmpdir')" % ", ".join(map(repr, bad)))
    bad = [s for s in (p["sysctls"] or []) if not s or "/" in s or ".." in s]
    if bad:
        module.fail_json(msg="sysctls: %s not sysctl names; write e.g. 'kernel.kptr_restrict'" % ", ".join(map(repr, bad)))
    bad = [n for n in p["pam"] if not n or "/" in n or n.startswith(".")]
    if bad:
        module.fail_json(msg="pam: %s not file names of /etc/pam.d; write e.g. 'common-session'" % ", ".join(map(repr, bad)))


def virtualization(module):
    """(what systemd-detect-virt says, whether the node is a container)."""
    detect = module.get_bin_path("systemd-detect-virt")
    if not detect:
        return "unknown", False
    _rc, out, _err = module.run_command([detect])
    rc, _out, _err = module.run_command([detect, "--container"])
    return out.strip() or "none", rc == 0


def sshd_config(module):
    """Effective sshd configuration (``sshd -T``); empty without sshd or when it fails."""
    sshd = module.get_bin_path("sshd", opt_dirs=["/usr/sbin"])
    if sshd:
        rc, out, _err = module.run_command([sshd, "-T", "-C", "user=root,host=localhost,addr=127.0.0.1"])
        if rc == 0:
            return parse_sshd(out)
    return {}


def nftables_digests(module):
    """'FAMILY NAME' -> SHA-256 of each table's listing without counter values."""
    digests = {}
    nft = module.get_bin_path("nft")
    if nft:
        rc, out, _err = module.run_command([nft, "-j", "list", "tables"])
        if rc == 0 and out.strip():
            for item in json.loads(out).get("nftables", []):
                table = item.get("table")
                if table:
                    _rc, listing, _e = module.run_command([nft, "list", "table", table["family"], table["name"]])
                    key = "%s %s" % (table["family"], table["name"])
                    digests[key] = hashlib.sha256(normalise(listing).encode()).hexdigest()
    return digests


def unit_exposure(module, units):
    """Unit -> overall exposure, for the units loaded on the node."""
    systemd = Systemd(module, required=False)
    if not systemd.available:
        return {}
    return dict((unit, exposure(module, unit)) for unit in units if systemd.unit(unit).is_loaded())


def parse_systemctl_show(out):
    """Unit -> {load, active, enabled} from ``systemctl show -p Id,LoadState,ActiveState,UnitFileState``
    of several units (blocks separated by a blank line, in the order asked)."""
    states = []
    for block in out.strip().split("\n\n"):
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        states.append({"load": props.get("LoadState", ""), "active": props.get("ActiveState", ""),
                       "enabled": props.get("UnitFileState", "")})
    return states


def unit_states(module, units):
    """Each of ``units`` -> its load, active and enablement state, one systemctl call."""
    if not units:
        return {}
    systemd = Systemd(module, required=False)
    unknown = {"load": "unknown", "active": "unknown", "enabled": ""}
    if not systemd.available:
        return dict((unit, dict(unknown)) for unit in units)
    rc, out, _err = systemd.run(["show", "-p", "LoadState,ActiveState,UnitFileState", "--", *units])
    states = parse_systemctl_show(out) if rc == 0 else []
    if len(states) != len(units):
        return dict((unit, dict(unknown)) for unit in units)
    return dict(zip(units, states, strict=True))


def sysctl_drift(expected):
    """Names of ``expected`` whose live value differs (or that the kernel lacks)."""
    live = read_sysctls(list(expected))
    return [name for name, value in expected.items()
            if live[name] is None or normal(live[name]) != normal(value)]


def ssh_client():
    """The address the SSH connection running this module comes from, or ''."""
    return (os.environ.get("SSH_CLIENT") or os.environ.get("SSH_CONNECTION") or "").split(" ")[0]


def ssh_login():
    """``{user, groups}`` of the account the connection logged in as (before sudo)."""
    name = os.environ.get("SUDO_USER") or ""
    try:
        entry = pwd.getpwnam(name) if name else pwd.getpwuid(os.getuid())
    except KeyError:
        return {"user": name, "groups": []}
    groups = [g.gr_name for g in grp.getgrall() if entry.pw_name in g.gr_mem]
    try:
        primary = grp.getgrgid(entry.pw_gid).gr_name
    except KeyError:
        primary = str(entry.pw_gid)
    return {"user": entry.pw_name, "groups": [primary] + [g for g in groups if g != primary]}


def posture(module):
    """The ``aegis_hardening`` facts."""
    p = module.params
    virt, container = virtualization(module)
    with open("/proc/self/mountinfo") as fh:
        mounts = mount_points(fh.read(), TEMP_DIRS)
    try:
        with open("/etc/fstab") as fh:
            fstab = fstab_entries(fh.read(), FSTAB_POINTS)
    except FileNotFoundError:
        fstab = {}
    return {
        "virtualization": virt,
        "container": container,
        "kernel_sysctls_writable": kernel_writable(),
        "sysctl": read_sysctls(p["sysctls"] or DEFAULT_SYSCTLS),
        "sshd": sshd_config(module),
        "nftables": nftables_digests(module),
        "mounts": mounts,
        "fstab": fstab,
        "measurements": dict((path, sha256_file(path)) for path in p["measure"]),
        "unit_exposure": unit_exposure(module, p["units"]),
        "package_lock": os.path.exists(PACKAGE_LOCK_HOOK),
        "packages": installed_packages(module, p["packages"]),
        "pam": dict((name, pam_modules(os.path.join(PAM_DIR, name))) for name in p["pam"]),
        "unit_states": unit_states(module, p["unit_states"]),
        "ssh_client": ssh_client(),
        "ssh_login": ssh_login(),
        "sysctl_drift": sysctl_drift(p["expect_sysctls"]),
    }


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    check_params(module)
    module.exit_json(changed=False, ansible_facts={"aegis_hardening": posture(module)})


if __name__ == "__main__":
    main()
