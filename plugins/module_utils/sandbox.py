# Copyright: Aegis contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""systemd sandboxing: the directives aegis.fleet knows, drop-in rendering, exposure."""

from __future__ import annotations

import re

# [Service]/[Unit] execution and sandboxing directives (systemd.exec(5), systemd.resource-control(5)).
KNOWN_DIRECTIVES = frozenset([
    "NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices",
    "PrivateNetwork", "PrivateUsers", "PrivateIPC", "PrivateMounts", "ProtectKernelTunables",
    "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups", "ProtectClock",
    "ProtectHostname", "ProtectProc", "ProcSubset", "RestrictRealtime", "RestrictSUIDSGID",
    "RestrictNamespaces", "RestrictAddressFamilies", "LockPersonality",
    "MemoryDenyWriteExecute", "SystemCallArchitectures", "SystemCallFilter",
    "SystemCallErrorNumber", "CapabilityBoundingSet", "AmbientCapabilities", "ReadOnlyPaths",
    "ReadWritePaths", "InaccessiblePaths", "ExecPaths", "NoExecPaths", "TemporaryFileSystem",
    "BindPaths", "BindReadOnlyPaths", "DynamicUser", "User", "Group", "SupplementaryGroups",
    "UMask", "KeyringMode", "RemoveIPC", "IPAddressAllow", "IPAddressDeny", "DevicePolicy",
    "DeviceAllow", "DelegateSubgroup", "RestrictFileSystems", "SocketBindAllow",
    "SocketBindDeny", "StateDirectory", "CacheDirectory", "LogsDirectory", "RuntimeDirectory",
    "ConfigurationDirectory", "LimitCORE", "LimitNOFILE", "LimitNPROC", "TasksMax",
    "MemoryMax", "CPUQuota",
])

#: the first line of every drop-in aegis.fleet.systemd_sandbox writes
HEADER = "Managed by aegis.fleet.systemd_sandbox"
#: the drop-in's file name (without .conf) unless the module is given another
DEFAULT_NAME = "50-aegis-sandbox"

_EXPOSURE = re.compile(r"Overall exposure level for \S+:\s+([0-9.]+)")
# Units that take execution and sandboxing directives, and the section they go in (systemd.exec(5)).
SECTIONS = {"service": "Service", "socket": "Socket", "mount": "Mount", "swap": "Swap"}
_UNIT = re.compile(r"^[A-Za-z0-9:_.\\@-]+\.(%s)$" % "|".join(SECTIONS))


def valid_unit_name(unit):
    return bool(_UNIT.match(unit)) and ".." not in unit


def section(unit):
    return SECTIONS[unit.rsplit(".", 1)[1]]


def check_settings(settings, allow_unknown=False):
    """Error messages for ``settings`` (empty when they can be rendered)."""
    errors = []
    unknown = sorted(set(settings) - KNOWN_DIRECTIVES)
    if unknown and not allow_unknown:
        errors.append("unknown directive(s) %s; use systemd.exec(5) sandboxing directives such as "
                      "ProtectSystem or NoNewPrivileges, or set allow_unknown=true" % ", ".join(unknown))
    for key, value in settings.items():
        if not re.match(r"^[A-Z][A-Za-z0-9]*$", key):
            errors.append("%r is not a directive name (CamelCase letters and digits, e.g. PrivateTmp)" % key)
        values = value if isinstance(value, (list, tuple)) else [value]
        if not values or any(v is None or isinstance(v, (dict, list, tuple)) for v in values):
            errors.append("%s has the value %r; give a string, a number, a boolean or a flat list of "
                          "strings" % (key, value))
    return errors


def render_value(value):
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return " ".join(render_value(v) for v in value)
    return " ".join(str(value).split())


def render_dropin(settings, header, unit_section="Service"):
    lines = ["# %s" % header, "[%s]" % unit_section]
    for key, value in settings.items():
        lines.append("%s=%s" % (key, render_value(value)))
    return "\n".join(lines) + "\n"


def parse_exposure(text):
    """The overall exposure from ``systemd-analyze security UNIT``. Its ``--json`` output
    (systemd 250 and later) lists the single tests but not the overall figure, so the
    human-readable summary line is what carries it."""
    match = _EXPOSURE.search(text)
    return float(match.group(1)) if match else None


def exposure(module, unit):
    """Overall exposure (0 safest .. 10) of a service, or None where it cannot be scored."""
    analyze = module.get_bin_path("systemd-analyze")
    if not analyze or not unit.endswith(".service"):
        return None
    rc, out, _err = module.run_command([analyze, "security", "--no-pager", unit])
    return parse_exposure(out) if rc == 0 else None
