# Copyright: Aegis contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the recovery modules (aegis.fleet.quarantine, aegis.fleet.forensics_bundle) and the
recovery playbooks share, with the standard library only (the modules run with the node's
system python or the agent's virtualenv):

- ``agent_call``: one request to the agent's control socket (the line protocol of
  ``aegis_agent.control``: ``{"cmd": ..., "args": {...}}`` -> ``{"ok": ..., "result"|"error"}``);
- ``normal_peer``: a management peer written the way the agent prints it;
- ``recipient_problem``: why a string is not an age X25519 recipient (bech32, ``age1...``);
- ``golden_diff``: the files whose SHA-256 differs from the golden record;
- ``process_list``: the processes from /proc;
- ``parse_show`` / ``keep_unit``: ``systemctl show`` blocks and the freeze allow-list.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import json
import os
import pwd
import socket

from ansible_collections.aegis.fleet.plugins.module_utils.files import sha256_file

AGE_HELP = ("make a key pair with `age-keygen -o ir.key` (the public key is printed and is "
            "`age-keygen -y ir.key`), or in Python `pyrage.x25519.Identity.generate()` "
            "(its `.to_public()`); keep the identity off the fleet")


class AgentError(RuntimeError):
    """The agent could not be reached or refused the request; the message says which."""


def agent_call(path, cmd, args=None, timeout=15.0):
    """Send one request to the agent's control socket and return its result."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            raise AgentError("the agent is not running (no control socket at %s); start it with "
                             "`systemctl start aegis-agent` or install it with aegis.fleet.agent" % path) from None
        except OSError as e:
            raise AgentError("cannot reach the agent at %s: %s" % (path, e.strerror or e)) from None
        sock.sendall(json.dumps({"cmd": cmd, "args": args or {}}).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
    except socket.timeout:
        raise AgentError("the agent did not answer %r within %s s" % (cmd, timeout)) from None
    finally:
        sock.close()
    if not buf:
        raise AgentError("the agent closed the connection without an answer to %r" % cmd)
    answer = json.loads(buf)
    if not answer.get("ok"):
        raise AgentError("the agent refused %r: %s" % (cmd, answer.get("error", "no reason given")))
    return answer.get("result")


def ssh_peer(ssh_connection):
    """``(client address, server port)`` of an ``SSH_CONNECTION`` value (``client_ip
    client_port server_ip server_port``); None when it is empty (not over SSH); ValueError
    when it is something else."""
    fields = str(ssh_connection or "").split()
    if not fields:
        return None
    if len(fields) != 4 or not fields[3].isdigit():
        raise ValueError("%r is not 'client_ip client_port server_ip server_port'" % (ssh_connection,))
    return fields[0], int(fields[3])


def normal_peer(spec):
    """``ADDRESS[/PREFIX] [PROTO[/PORT]]`` as the agent prints it (``10.0.0.1 tcp/22``,
    ``10.0.0.0/24``); ValueError with the shape to write for anything else."""
    parts = spec.split() if isinstance(spec, str) else []
    if not 1 <= len(parts) <= 2:
        raise ValueError("bad management peer %r: write 'ADDRESS[/PREFIX] [PROTO/PORT]', "
                         "e.g. '192.0.2.10 tcp/22'" % (spec,))
    try:
        net = ipaddress.IPv4Network(parts[0], strict=False)
    except ValueError:
        raise ValueError("bad management peer %r: %r is not an IPv4 address or network"
                         % (spec, parts[0])) from None
    text = str(net.network_address) if net.prefixlen == 32 else str(net)
    if len(parts) == 2:
        proto, sep, port = parts[1].lower().partition("/")
        if (proto not in ("tcp", "udp", "icmp") or (sep and proto == "icmp")
                or (sep and not (port.isdigit() and 1 <= int(port) <= 65535))):
            raise ValueError("bad management peer %r: %r is not PROTO[/PORT] (tcp or udp with a "
                             "port 1-65535, or icmp without one)" % (spec, parts[1]))
        text += " " + proto + ("/%d" % int(port) if sep else "")
    return text


# -- age recipients (bech32, BIP 173: age's public keys use the original checksum) ----------
_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"


def _polymod(values):
    gen = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
    chk = 1
    for v in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ v
        for i in range(5):
            chk ^= gen[i] if (top >> i) & 1 else 0
    return chk


def recipient_problem(value):
    """None for an age X25519 recipient (``age1`` + 58 bech32 characters carrying 32 bytes),
    else what is wrong with it, ending with how to make one."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return "no recipient given; " + AGE_HELP
    if not isinstance(value, str):
        return "the recipient must be a string like age1..., not %s; %s" % (type(value).__name__, AGE_HELP)
    text = value.strip()
    if text.upper().startswith("AGE-SECRET-KEY-"):
        return ("that is an age identity (a private key), not a recipient: never send it to a node; "
                "give its public key (`age-keygen -y FILE`)")
    if text.startswith(("ssh-", "ecdsa-")):
        return "SSH keys are not accepted here: give an age X25519 recipient (age1...); " + AGE_HELP
    if text != text.lower() and text != text.upper():
        return "mixed upper and lower case is not valid bech32; " + AGE_HELP
    text = text.lower()
    if not text.startswith("age1"):
        return "an age X25519 recipient starts with 'age1'; " + AGE_HELP
    data = text[4:]
    bad = sorted(set(c for c in data if c not in _CHARSET))
    if bad:
        return "character(s) %s are not bech32; %s" % (", ".join(repr(c) for c in bad), AGE_HELP)
    if len(data) != 58:
        return ("an age X25519 recipient has 62 characters, this one has %d (cut or pasted twice?); %s"
                % (len(text), AGE_HELP))
    values = [_CHARSET.index(c) for c in data]
    hrp = [ord(c) >> 5 for c in "age"] + [0] + [ord(c) & 31 for c in "age"]
    if _polymod(hrp + values) != 1:
        return "its bech32 checksum does not match (a typo?); copy the key again or " + AGE_HELP
    return None


# -- golden record ------------------------------------------------------------------------
def golden_diff(record, hasher=sha256_file):
    """The files of a golden record (``aegis.golden/v1``: ``files`` maps a path to its
    SHA-256 or null) whose hash on the node differs, each ``{path, expected, actual,
    status}`` with status ``changed``, ``missing`` or ``appeared``; sorted by path."""
    if not isinstance(record, dict) or not isinstance(record.get("files", {}), dict):
        raise ValueError("not a golden record: expected a JSON object with a 'files' object "
                         "(aegis.golden/v1, written by aegis.fleet.harden)")
    out = []
    for path in sorted(record.get("files", {})):
        expected = record["files"][path]
        actual = hasher(path)
        if actual == expected:
            continue
        status = "missing" if actual is None else "appeared" if expected is None else "changed"
        out.append({"path": path, "expected": expected, "actual": actual, "status": status})
    return out


# -- processes ----------------------------------------------------------------------------
def _read(path, mode="r"):
    try:
        with open(path, mode) as fh:
            return fh.read()
    except OSError:
        return None


def process_list(proc="/proc"):
    """Every process: pid, ppid, user, exe (the link, '(deleted)' kept), cmdline, state."""
    out = []
    for name in os.listdir(proc):
        if not name.isdigit():
            continue
        base = os.path.join(proc, name)
        stat = _read(os.path.join(base, "stat"))
        if stat is None:
            continue  # gone meanwhile
        comm = stat[stat.find("(") + 1:stat.rfind(")")]
        fields = stat[stat.rfind(")") + 2:].split()
        status = _read(os.path.join(base, "status")) or ""
        uid = None
        for line in status.splitlines():
            if line.startswith("Uid:"):
                uid = int(line.split()[1])
        try:
            user = pwd.getpwuid(uid).pw_name if uid is not None else None
        except KeyError:
            user = str(uid)
        try:
            exe = os.readlink(os.path.join(base, "exe"))
        except OSError:
            exe = None  # a kernel thread, or gone
        raw = _read(os.path.join(base, "cmdline"), "rb") or b""
        out.append({"pid": int(name), "ppid": int(fields[1]) if len(fields) > 1 else None,
                    "state": fields[0] if fields else None, "comm": comm, "uid": uid,
                    "user": user, "exe": exe,
                    "cmdline": [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a]})
    return sorted(out, key=lambda p: p["pid"])


# -- systemd ------------------------------------------------------------------------------
def parse_show(text):
    """``systemctl show -p A,B U1 U2 ...``: one dict per unit (blocks split by blank lines)."""
    units, cur = [], {}
    for line in text.splitlines():
        if not line.strip():
            if cur:
                units.append(cur)
            cur = {}
            continue
        key, _sep, value = line.partition("=")
        cur[key] = value
    if cur:
        units.append(cur)
    return units


def keep_unit(name, patterns):
    """Whether the allow-list (shell patterns, e.g. ``systemd-*``) keeps a unit running;
    a pattern without a type suffix also matches the ``.service``."""
    for pattern in patterns:
        if fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, pattern + ".service"):
            return True
    return False
