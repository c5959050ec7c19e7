# Copyright: Aegis contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Sysctl values as /proc/sys holds them, read the same way by the modules that report
them (hardening_facts), record them (golden_record) and set them (sysctls)."""

from __future__ import annotations

import os

#: the hardening baseline's sysctls: what the golden record holds and the agent digests
DEFAULT_SYSCTLS = [
    "kernel.kptr_restrict", "kernel.dmesg_restrict", "kernel.yama.ptrace_scope",
    "kernel.unprivileged_bpf_disabled", "kernel.kexec_load_disabled", "kernel.sysrq",
    "kernel.perf_event_paranoid", "kernel.randomize_va_space", "net.core.bpf_jit_harden",
    "fs.suid_dumpable", "fs.protected_hardlinks", "fs.protected_symlinks", "fs.protected_fifos",
    "fs.protected_regular", "net.ipv4.conf.all.rp_filter", "net.ipv4.conf.all.accept_redirects",
    "net.ipv4.conf.all.send_redirects", "net.ipv4.conf.all.accept_source_route",
    "net.ipv4.tcp_syncookies", "net.ipv6.conf.all.accept_redirects",
]


def proc_path(name, root="/proc/sys"):
    """The /proc/sys file of a dotted sysctl name."""
    return os.path.join(root, *name.split("."))


def read_sysctls(names, root="/proc/sys"):
    """name -> value (whitespace-separated fields joined by one space), None where the
    kernel has no such setting."""
    values = {}
    for name in names:
        try:
            with open(proc_path(name, root)) as fh:
                values[name] = " ".join(fh.read().split())
        except OSError:
            values[name] = None
    return values


#: the first line of a sysctl.d file aegis.fleet.sysctls writes
CONF_HEADER = "# Managed by aegis.fleet.sysctls: edits are replaced on the next converge.\n"


def normal(value):
    """A value as the kernel prints it: whitespace-separated fields joined by one tab;
    booleans as 1/0."""
    if isinstance(value, bool):
        value = int(value)
    return "\t".join(str(value).split())


def render_conf(values):
    """The sysctl.d file holding ``values`` (name -> value), in their order."""
    return CONF_HEADER + "".join("%s = %s\n" % (name, " ".join(normal(v).split("\t")))
                                 for name, v in values.items())
