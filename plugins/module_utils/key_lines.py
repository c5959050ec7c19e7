# Copyright: Aegis contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Keys of a "KEY value" configuration file the distribution owns (/etc/login.defs):
set each key's lines, keep every other line (managed_files' ``state: keys``)."""

from __future__ import annotations

import re

KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def set_keys(text, keys, separator="\t"):
    """(new text, changed keys) with every key of ``keys`` set in ``text``: each active
    line of a key gets the value; without one, the first commented-out line of the key
    (``# KEY ...``) is replaced; without either, the key is appended."""
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    changed = []
    for key, value in keys.items():
        wanted = "%s%s%s\n" % (key, separator, value)
        active = re.compile(r"^\s*%s(\s|$)" % re.escape(key))
        commented = re.compile(r"^\s*#\s*%s(\s|$)" % re.escape(key))
        hits = [i for i, line in enumerate(lines) if active.match(line)]
        if not hits:
            hits = [i for i, line in enumerate(lines) if commented.match(line)][:1]
        if not hits:
            lines.append(wanted)
            changed.append(key)
            continue
        if any(lines[i] != wanted for i in hits):
            changed.append(key)
            for i in hits:
                lines[i] = wanted
    return "".join(lines), changed


def check_keys(keys, separator):
    """Problems with ``keys`` and ``separator`` (empty when fine)."""
    problems = []
    bad = [k for k in keys if not KEY.match(k)]
    if bad:
        problems.append("keys %s are not plain words; write e.g. PASS_MAX_DAYS" % ", ".join(map(repr, bad)))
    bad = [k for k, v in keys.items() if isinstance(v, (dict, list)) or v is None or "\n" in str(v)]
    if bad:
        problems.append("the values of %s must be one-line strings or numbers" % ", ".join(bad))
    if not separator or separator.strip(" \t") not in ("", "="):
        problems.append("separator %r: use whitespace or '='" % separator)
    return problems
