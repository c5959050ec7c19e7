"""The console's query strings, checked: each page names the parameters it takes and
their allowed values; anything else is a 400 that says what was wrong."""

from __future__ import annotations

import re
from collections.abc import Mapping

from ..errors import Invalid

#: The longest query string a console page reads.
MAX_QUERY = 1024
_TEXT = re.compile(r"[A-Za-z0-9._@:-]{0,63}")


def read(query: str, params: Mapping[str, str | None], allowed: Mapping[str, tuple[str, ...]]
         ) -> dict[str, str]:
    """``params`` checked against ``allowed`` (name -> its values; an empty tuple: a short
    name-like text); missing ones are ""."""
    if len(query) > MAX_QUERY:
        raise Invalid(f"the query string is {len(query)} characters long: the console reads "
                      f"at most {MAX_QUERY}")
    out = dict.fromkeys(allowed, "")
    for name, given in params.items():
        if name not in allowed:
            raise Invalid(f"unknown filter {name!r}: this page takes "
                          f"{', '.join(sorted(allowed)) or 'none'}")
        value = given or ""
        choices = allowed[name]
        if choices and value and value not in choices:
            raise Invalid(f"{name}={value[:64]!r} is not one of {', '.join(choices)}")
        if not choices and not _TEXT.fullmatch(value):
            raise Invalid(f"{name}={value[:64]!r}: give up to 63 letters, digits, '.', '_', "
                          "'@', ':' or '-'")
        out[name] = value
    return out
