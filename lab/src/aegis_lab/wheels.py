"""The agent's wheelhouse: wheels of ``aegis-agent``, ``aegis-protocol`` and their
dependencies, built on the control node for the nodes, which cannot reach PyPI.

The ``aegis.fleet.agent`` role copies the wheelhouse to a node and installs from it with
``--no-index``. Builds are reproducible (``SOURCE_DATE_EPOCH``; sources copied out of
the tree so no ``build/`` is left in it) and skipped when the sources and pins are the
ones the wheelhouse was built from, so a second role run copies nothing.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .paths import Paths

PACKAGES = ("protocol", "agent")
STAMP = ".source-hash"


class WheelBuildError(RuntimeError):
    pass


def _sources(paths: Paths) -> list[Path]:
    files = [paths.requirements]
    for pkg in PACKAGES:
        root = paths.repo_root / pkg
        files.append(root / "pyproject.toml")
        files += sorted(p for p in (root / "src").rglob("*.py")
                        if "egg-info" not in str(p) and "__pycache__" not in p.parts)
    return files


def source_hash(paths: Paths) -> str:
    h = hashlib.sha256()
    for path in _sources(paths):
        h.update(str(path.relative_to(paths.repo_root)).encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()


def _pins(paths: Paths) -> str:
    """The project's ``NAME==VERSION`` pins (extras dropped) as pip constraints, so a
    node runs the dependency versions the tests ran."""
    out = []
    for line in paths.requirements.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)(\[[^\]]*\])?(==[^\s;#]+)", line.strip())
        if m:
            out.append(m.group(1) + m.group(3))
    return "\n".join(out) + "\n"


def build_agent_wheels(paths: Paths, out: Path | None = None, *,
                       force: bool = False) -> tuple[Path, bool]:
    """Build the wheelhouse if its sources changed; returns (directory, built)."""
    out = out or paths.wheelhouse
    digest = source_hash(paths)
    stamp = out / STAMP
    if not force and stamp.exists() and stamp.read_text().strip() == digest:
        return out, False
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="aegis-wheels-", dir=out.parent) as tmp:
        work, dest = Path(tmp) / "src", Path(tmp) / "wheels"
        for pkg in PACKAGES:
            shutil.copytree(paths.repo_root / pkg, work / pkg,
                            ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
        constraints = Path(tmp) / "constraints.txt"
        constraints.write_text(_pins(paths))
        env = dict(os.environ, SOURCE_DATE_EPOCH="315532800", PIP_DISABLE_PIP_VERSION_CHECK="1")
        cmd = [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(dest),
               "--constraint", str(constraints),
               *(str(work / pkg) for pkg in PACKAGES)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if proc.returncode:
            raise WheelBuildError(f"pip wheel failed (exit {proc.returncode}); the agent's "
                                  f"dependencies come from PyPI: {proc.stderr.strip()[-1500:]}")
        (dest / STAMP).write_text(digest + "\n")
        old = out.with_name(out.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if out.exists():
            out.rename(old)
        dest.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    return out, True
