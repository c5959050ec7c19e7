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

_EXPOSURE = re.compile(r"Overall exposure level for \S+:\s+([0-9.]+)")
_UNIT = re.compile(r"^[A-Za-z0-9:_.\\@-]+\.(service|socket|timer|mount|path)$")


def valid_unit_name(unit):
    return bool(_UNIT.match(unit))


def render_value(value):
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return " ".join(render_value(v) for v in value)
    return " ".join(str(value).split())


def render_dropin(settings, header):
    lines = ["# %s" % header, "[Service]"]
    for key, value in settings.items():
        lines.append("%s=%s" % (key, render_value(value)))
    return "\n".join(lines) + "\n"


def parse_exposure(text):
    match = _EXPOSURE.search(text)
    return float(match.group(1)) if match else None


def exposure(module, unit):
    analyze = module.get_bin_path("systemd-analyze")
    if not analyze:
        return None
    rc, out, _err = module.run_command([analyze, "security", "--no-pager", unit])
    return parse_exposure(out) if rc == 0 else None
