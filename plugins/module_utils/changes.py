# Copyright: Aegis contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One way for the aegis.fleet modules to report a change: the before and after state,
from which ``changed`` and the ``diff`` both follow (so check mode needs no special case)."""

from __future__ import annotations


def text_diff(before, after, before_header, after_header=None):
    """The ``diff`` dict Ansible shows with ``--diff``."""
    return {
        "before": before if before is not None else "",
        "after": after if after is not None else "",
        "before_header": before_header,
        "after_header": after_header or before_header,
    }


def report(module, before, after, header, **result):
    """Exit with ``changed`` (before != after) and, in diff mode, the diff."""
    result["changed"] = before != after
    if module._diff:
        result["diff"] = text_diff(before, after, header)
    module.exit_json(**result)
