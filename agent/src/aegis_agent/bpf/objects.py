"""Where the built BPF objects are: an explicit path, $AEGIS_BPF_DIR, this source
checkout's bpf/build/, or the installed /usr/lib/aegis/bpf."""

from __future__ import annotations

import os
from pathlib import Path

INSTALLED = Path("/usr/lib/aegis/bpf")


class ObjectMissingError(FileNotFoundError):
    """A .bpf.o file is not built: the message says how to build it."""


def _checkout_build() -> Path | None:
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "bpf" / "Makefile").is_file():
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
