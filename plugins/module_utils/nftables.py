# Copyright: Aegis contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""nftables helpers for aegis.fleet: which tables an nft script declares, the canonical
text of a script (as the kernel lists it), atomic replacement of whole tables and the
commit-confirmed rollback guard."""

from __future__ import annotations

import os
import re

FAMILIES = ("ip", "ip6", "inet", "arp", "bridge", "netdev")
_TABLE = re.compile(r"^table\s+(\S+)\s+(\S+)\s*\{")
_COUNTER = re.compile(r"counter packets \d+ bytes \d+")
GUARD_DIR = "/run/aegis/nft-guard"


class RulesetError(ValueError):
    """The nft script is not something this module manages; the message says why."""


def _strip_comments(text):
    out = []
    for line in text.splitlines():
        quoted = False
        cut = len(line)
        for i, ch in enumerate(line):
            if ch == '"':
                quoted = not quoted
            elif ch == "#" and not quoted:
                cut = i
                break
        out.append(line[:cut])
    return "\n".join(out)


def declared_tables(content):
    """[(family, name)] of the tables ``content`` declares, in order.

    Only whole-table declarations are accepted at the top level (``table FAMILY NAME {
    ... }``): a script that flushes the ruleset or touches tables it does not declare
    would reach beyond what the module manages.
    """
    text = _strip_comments(content)
    depth = 0
    statement = ""
    tables = []
    for ch in text:
        if depth == 0 and ch in "\n;":
            _top_level(statement.strip(), tables)
            statement = ""
            continue
        if ch == "{":
            if depth == 0:
                _top_level(statement.strip() + " {", tables)
                statement = ""
            depth += 1
            continue
        if ch == "}":
            depth -= 1
            if depth < 0:
                raise RulesetError("content has a '}' without its '{'")
            continue
        if depth == 0:
            statement += ch
    if depth != 0:
        raise RulesetError("content has a '{' that is never closed")
    _top_level(statement.strip(), tables)
    if not tables:
        raise RulesetError("content declares no table; write e.g. 'table inet aegis_baseline { ... }'")
    if len(set(tables)) != len(tables):
        raise RulesetError("content declares the same table twice")
    return tables


def _top_level(statement, tables):
    if not statement:
        return
    match = _TABLE.match(statement)
    if not match:
        raise RulesetError(
            "content may only declare whole tables ('table FAMILY NAME { ... }'); "
            "found the top-level statement %r" % statement.rstrip(" {")
        )
    family, name = match.groups()
    if family not in FAMILIES:
        raise RulesetError("table %s has the unknown family %r; use one of %s" % (name, family, ", ".join(FAMILIES)))
    tables.append((family, name))


def normalise(listing):
    """Listing text without what changes by itself (counter values), for comparison."""
    lines = [_COUNTER.sub("counter", line.rstrip()) for line in listing.strip().splitlines()]
    return "\n".join(lines) + ("\n" if lines else "")


def replace_script(tables, content):
    """One nft transaction that replaces ``tables`` with ``content`` (no window without rules)."""
    head = "".join("table %s %s {}\ndelete table %s %s\n" % (f, n, f, n) for f, n in tables)
    return head + content + ("\n" if not content.endswith("\n") else "")


def delete_script(tables):
    return "".join("table %s %s {}\ndelete table %s %s\n" % (f, n, f, n) for f, n in tables)


class Nft:
    """The nft command on the managed node."""

    def __init__(self, module):
        self.module = module
        self.nft = module.get_bin_path("nft", required=True)

    def run(self, args, data=None, check_rc=True):
        rc, out, err = self.module.run_command([self.nft, *args], data=data, binary_data=True)
        if check_rc and rc != 0:
            self.module.fail_json(msg="nft %s failed: %s" % (" ".join(args), (err or out).strip()), rc=rc)
        return rc, out, err

    def existing(self):
        """Set of (family, name) of the tables present now."""
        _rc, out, _err = self.run(["list", "tables"])
        found = set()
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == "table":
                found.add((parts[1], parts[2]))
        return found

    def current_text(self, tables):
        present = self.existing()
        chunks = []
        for family, name in tables:
            if (family, name) in present:
                _rc, out, _err = self.run(["list", "table", family, name])
                chunks.append(out)
        return normalise("".join(chunks)), present

    def canonical(self, content):
        """How the kernel lists ``content``: loaded into a throwaway network namespace."""
        unshare = self.module.get_bin_path("unshare", required=True)
        rc, out, err = self.module.run_command(
            [unshare, "--net", "sh", "-c", '"$0" -f - && "$0" list ruleset', self.nft],
            data=content, binary_data=True)
        if rc != 0:
            self.module.fail_json(msg="content: nft cannot load it: %s" % (err or out).strip(), rc=rc)
        return normalise(out)

    def check(self, script):
        self.run(["-c", "-f", "-"], data=script)

    def apply(self, script):
        self.run(["-f", "-"], data=script)


class Guard:
    """Commit-confirmed: restore the saved tables after a timeout unless confirmed."""

    def __init__(self, module, name):
        self.module = module
        self.name = name
        self.unit = "%s-rollback" % name
        self.path = os.path.join(GUARD_DIR, "%s.nft" % name)
        self.systemctl = module.get_bin_path("systemctl", required=True)

    def armed(self):
        rc, _out, _err = self.module.run_command([self.systemctl, "is-active", "--quiet", self.unit + ".timer"])
        return rc == 0

    def disarm(self):
        was = self.armed()
        self.module.run_command([self.systemctl, "stop", self.unit + ".timer", self.unit + ".service"])
        self.module.run_command([self.systemctl, "reset-failed", self.unit + ".timer", self.unit + ".service"])
        if os.path.exists(self.path):
            os.unlink(self.path)
        return was

    def arm(self, restore_script, timeout, nft_path):
        self.disarm()
        os.makedirs(GUARD_DIR, mode=0o700, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(restore_script)
            fh.flush()
            os.fsync(fh.fileno())
        run = self.module.get_bin_path("systemd-run", required=True)
        rc, out, err = self.module.run_command([
            run, "--unit", self.unit, "--on-active=%ds" % timeout, "--timer-property=AccuracySec=1s",
            "--description=aegis: restore the previous nftables tables (unconfirmed change)",
            nft_path, "-f", self.path,
        ])
        if rc != 0:
            self.module.fail_json(msg="could not arm the rollback guard with systemd-run: %s" % (err or out).strip())
