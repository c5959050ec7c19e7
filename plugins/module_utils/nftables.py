# Copyright: Aegis contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""nftables scripts for aegis.fleet: which tables an nft script declares, the canonical
text of a script (as the kernel lists it) and atomic replacement of whole tables.

The commit-confirmed rollback guard that restores them is in ``rollback_guard``."""

from __future__ import annotations

import re

FAMILIES = ("ip", "ip6", "inet", "arp", "bridge", "netdev")
_TABLE = re.compile(r"^table\s+(\S+)\s+(\S+)\s*\{$")
_DEFINE = re.compile(r"^(define|redefine|undefine)\s+\$?[A-Za-z_][A-Za-z0-9_]*\b")
# What the kernel changes by itself in a listing: counter and quota usage.
_ANON_COUNTER = re.compile(r"\bcounter packets \d+ bytes \d+")
_NAMED_COUNTER = re.compile(r"^(\s*)packets \d+ bytes \d+$")
_QUOTA_USED = re.compile(r"(\bquota (?:over |until )?\d+ \w+) used \d+ \w+")
# Interfaces a script matches by index (iif/oif "eth0"): nft resolves them at load time.
_IFACE = re.compile(r"\b[io]if\s+(\{[^}]*\}|\"[^\"]+\"|[A-Za-z0-9_.:@-]+)")
_IFNAME = re.compile(r"[A-Za-z0-9_.:@-]{1,15}")
_RESTORED_TABLE = re.compile(r"^delete table (\S+) (\S+)$", re.M)


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

    Only whole-table declarations (``table FAMILY NAME { ... }``) and variable
    definitions (``define NAME = ...``) are accepted at the top level: a script that
    flushes the ruleset, includes files or touches tables it does not declare would
    reach beyond what the module manages.
    """
    text = _strip_comments(content)
    depth = 0
    quoted = False
    statement = ""
    tables = []
    for ch in text:
        if ch == '"':
            quoted = not quoted
        elif quoted:
            pass
        elif depth == 0 and ch in "\n;":
            _top_level(statement.strip(), tables)
            statement = ""
            continue
        elif ch == "{":
            if depth == 0:
                _top_level(statement.strip() + " {", tables)
                statement = ""
            depth += 1
            continue
        elif ch == "}":
            depth -= 1
            if depth < 0:
                raise RulesetError("content has a '}' without its '{'")
            continue
        if depth == 0:
            statement += ch
    if quoted:
        raise RulesetError("content has a '\"' that is never closed")
    if depth != 0:
        raise RulesetError("content has a '{' that is never closed")
    _top_level(statement.strip(), tables)
    if not tables:
        raise RulesetError("content declares no table; write e.g. 'table inet aegis_baseline { ... }'")
    if len(set(tables)) != len(tables):
        raise RulesetError("content declares the same table twice")
    return tables


def _top_level(statement, tables):
    if not statement or _DEFINE.match(statement):
        return
    match = _TABLE.match(statement)
    if not match:
        raise RulesetError(
            "content may only declare whole tables ('table FAMILY NAME { ... }', with the family "
            "written out) and 'define' variables; found the top-level statement %r"
            % statement.rstrip(" {")
        )
    family, name = match.groups()
    if family not in FAMILIES:
        raise RulesetError("table %s has the unknown family %r; use one of %s" % (name, family, ", ".join(FAMILIES)))
    tables.append((family, name))


def parse_table_names(items):
    """[(family, name)] from 'FAMILY NAME' strings; RulesetError names the bad one."""
    tables = []
    for item in items:
        parts = item.split()
        if len(parts) != 2 or parts[0] not in FAMILIES:
            raise RulesetError("%r is not 'FAMILY NAME' with FAMILY one of %s, e.g. 'inet aegis_baseline'"
                               % (item, ", ".join(FAMILIES)))
        tables.append((parts[0], parts[1]))
    return tables


def interfaces(content):
    """Interface names that ``content`` matches with iif/oif (resolved by index at load time)."""
    names = []
    for match in _IFACE.finditer(_strip_comments(content)):
        for token in re.split(r"[{},\s]+", match.group(1)):
            token = token.strip('"')
            if token and not token.startswith("$") and _IFNAME.fullmatch(token) and token not in names:
                names.append(token)
    return names


def normalise(listing):
    """Listing text without what changes by itself (counter and quota usage), for comparison."""
    lines = []
    for line in listing.strip().splitlines():
        line = _ANON_COUNTER.sub("counter", line.rstrip())
        line = _NAMED_COUNTER.sub(r"\1packets 0 bytes 0", line)
        lines.append(_QUOTA_USED.sub(r"\1", line))
    return "\n".join(lines) + ("\n" if lines else "")


def split_listing(listing):
    """{(family, name): text} of a ``list ruleset`` listing, one entry per table."""
    chunks = {}
    current = None
    for line in listing.splitlines(True):
        match = re.match(r"^table (\S+) (\S+) \{", line)
        if match:
            current = (match.group(1), match.group(2))
            chunks[current] = ""
        if current is not None:
            chunks[current] += line
    return chunks


def delete_script(tables):
    """Delete ``tables`` whether or not they exist (declaring an empty table first is a no-op
    when it exists and makes the delete safe when it does not)."""
    return "".join("table %s %s {}\ndelete table %s %s\n" % (f, n, f, n) for f, n in tables)


def replace_script(tables, content):
    """One nft transaction that replaces ``tables`` with ``content`` (no window without rules)."""
    return delete_script(tables) + content + ("\n" if not content.endswith("\n") else "")


def restore_script(tables, listings, previous=None):
    """The script the rollback guard runs: every managed table back to its saved listing,
    and deleted if it did not exist (``listings`` maps (family, name) to the listing of the
    tables that existed). With ``previous`` (the script of a guard still armed by an
    unconfirmed change) the earlier saved state wins and only new tables are added, so the
    rollback goes back to the last confirmed state."""
    covered = set(restored_tables(previous or ""))
    script = previous or ""
    for table in tables:
        if table in covered:
            continue
        script += delete_script([table]) + listings.get(table, "")
        if not script.endswith("\n"):
            script += "\n"
    return script


def restored_tables(script):
    return [(m.group(1), m.group(2)) for m in _RESTORED_TABLE.finditer(script)]


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

    def listings(self, tables):
        """{(family, name): listing} of those of ``tables`` that exist now."""
        present = self.existing()
        return dict((t, self.run(["list", "table", t[0], t[1]])[1]) for t in tables if t in present)

    def canonical(self, content, tables):
        """How the kernel lists ``content``: loaded into a throwaway network namespace (with
        stand-in interfaces for the names it matches by index), so nothing on the node
        changes; the tables in the order of ``tables``, like the current listing."""
        unshare = self.module.get_bin_path("unshare", required=True)
        names = interfaces(content)
        argv = [unshare, "--net", "sh", "-c", '"$0" -f - && "$0" list ruleset', self.nft]
        if names:
            argv = [unshare, "--net", "sh", "-c",
                    # veth rather than dummy: the veth driver is loaded wherever containers run.
                    'nft=$0; ip=$1; shift; n=0; for i in "$@"; do n=$((n+1)); '
                    '"$ip" link show "$i" >/dev/null 2>&1 || '
                    '"$ip" link add name "$i" type veth peer name "aegis-peer$n" || exit 3; done; '
                    '"$nft" -f - && "$nft" list ruleset',
                    self.nft, self.module.get_bin_path("ip", required=True), *names]
        rc, out, err = self.module.run_command(argv, data=content, binary_data=True)
        if rc != 0:
            msg = "content: nft cannot load it: %s" % (err or out).strip()
            if "Interface does not exist" in (err or out):
                msg += " (match interfaces by name with iifname/oifname instead of iif/oif)"
            self.module.fail_json(msg=msg, rc=rc)
        chunks = split_listing(out)
        return normalise("".join(chunks.get(t, "") for t in tables))

    def check(self, script):
        self.run(["-c", "-f", "-"], data=script)
