"""Where the built BPF objects are. One rule, first match wins:

1. an explicit path (``object_file=``);
2. ``$AEGIS_BPF_DIR/<name>.bpf.o``;
3. a source checkout: the nearest directory above this file that holds the repo
   marker ``bpf/Makefile`` gives ``bpf/build/`` (what ``make -C bpf`` builds; an
   editable install runs from the checkout, so this needs no path arithmetic);
4. the installed ``/usr/lib/aegis/bpf``.
"""

from __future__ import annotations

import os
from pathlib import Path

INSTALLED = Path("/usr/lib/aegis/bpf")


class ObjectMissingError(FileNotFoundError):
    """A .bpf.o file is not built: the message says how to build it."""


REPO_MARKER = Path("bpf") / "Makefile"


def _checkout_build() -> Path | None:
    """``bpf/build`` of the checkout this module runs from (rule 3), or None."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / REPO_MARKER).is_file():
            return parent / "bpf" / "build"
    return None


def object_path(name: str, explicit: str | os.PathLike | None = None) -> Path:
    """The path of ``<name>.bpf.o``; raises ObjectMissingError naming ``make -C bpf``."""
    if explicit:
        candidates = [Path(explicit)]
    else:
        dirs = [Path(d) for d in [os.environ.get("AEGIS_BPF_DIR")] if d]
        build = _checkout_build()
        dirs += [build] if build else []
        dirs.append(INSTALLED)
        candidates = [d / f"{name}.bpf.o" for d in dirs]
    for c in candidates:
        if c.is_file():
            return c
    where = ", ".join(str(c) for c in candidates)
    build = _checkout_build()
    hint = (f"build it with `make -C {build.parent}` (clang, bpftool and libbpf-dev; "
            "scripts/bootstrap.sh does this)" if build else
            "build it with `make -C bpf` in the Aegis checkout, or set AEGIS_BPF_DIR")
    raise ObjectMissingError(f"BPF object {name}.bpf.o not found (looked at {where}); {hint}")
