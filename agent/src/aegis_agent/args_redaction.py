"""Secrets typed on a command line kept off the record: the argv of an exec in an SSH
session (``exec_event`` with ``args``) goes into the agent's spool on the node's disk, to
the controller's events and onto the ledger as the grant's session record, so values that
are secrets by their name are replaced by ``*****`` before any of that — as Tetragon's
redaction filters do for process arguments.

Redacted (case-insensitive): the value of an option or assignment whose name says
password, passwd, secret, token, api key or credential (``--password hunter2``,
``--db-password=x``, ``PGPASSWORD=x``, ``token=x``), except names ending in ``file`` or
``path`` (their value is where the secret is, not the secret); the password of a URL
(``postgresql://app:PASSWORD@db/app``); the credentials of an ``Authorization:`` header
(``curl -H "Authorization: Bearer …"``); and a MySQL/MariaDB client's ``-pPASSWORD``.

What cannot be caught this way — a secret given as a bare positional argument, or cut
by the 255-byte limit before its name was seen — is why secrets belong in files or the
environment, never in argv (``ps`` shows argv to every user of the node anyway).
"""

from __future__ import annotations

import re

MASK = "*****"

_NAMED = re.compile(
    r"(?P<name>(?:^|(?<=\s))-{0,2}[\w.-]*(?:passw(?:or)?d|secret|token|api[-_]?key|"
    r"credentials?)[\w.-]*)(?P<sep>=|\s+)(?P<value>\S+)", re.IGNORECASE)
_URL = re.compile(r"(?P<head>\b[a-z][a-z0-9+.-]*://[^/\s:@]*:)(?P<value>[^@\s/]+)(?=@)",
                  re.IGNORECASE)
_AUTH = re.compile(r"(?P<head>\bauthorization:\s*(?:[a-z]+\s+)?)(?P<value>\S+)",
                   re.IGNORECASE)
_MYSQL_P = re.compile(r"(?P<head>\s-p)(?P<value>\S+)")
_MYSQL = re.compile(r"^\S*\b(?:mysql|mariadb)[\w-]*\s", re.IGNORECASE)
_HINT = re.compile(r"passw|secret|token|api.?key|credential|://|authorization|mysql|mariadb",
                   re.IGNORECASE)


def _named(m: re.Match[str]) -> str:
    name = m.group("name")
    if name.lower().endswith(("file", "path")) or (
            not name.startswith("-") and m.group("sep") != "="):
        return m.group(0)  # a file's name, or a bare word followed by a space
    return f"{name}{m.group('sep')}{MASK}"


def redact(args: str) -> str:
    """``args`` (an argv joined by spaces) with the secrets above masked."""
    if not _HINT.search(args):  # nearly every command: one scan, no rewrite
        return args
    if _MYSQL.match(args):  # first: "-pTopSecret" must not read as an option's name
        args = _MYSQL_P.sub(lambda m: m.group("head") + MASK, args)
    args = _NAMED.sub(_named, args)
    args = _URL.sub(lambda m: m.group("head") + MASK, args)
    return _AUTH.sub(lambda m: m.group("head") + MASK, args)
