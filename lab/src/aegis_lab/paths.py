"""Where the lab finds the checkout it drives and keeps its state: one ``Paths`` object.

The CLI makes it once (``Paths.discover``) and passes it down; nothing else in the lab
derives a path from its own file location. The rule for the repository root, in order:

1. an explicit ``repo`` (the CLI's ``--repo``), else ``$AEGIS_REPO``;
2. else the checkout this package is installed from (an editable install: the first
   directory upwards from the package holding ``galaxy.yml``);
3. else the first directory upwards from the working directory holding ``galaxy.yml``.

The state root is ``$AEGIS_STATE_DIR`` or ``<repo>/.state``.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from .naming import LabInputError

#: The file that marks the root of an Aegis checkout (the collection's manifest).
MARKER = "galaxy.yml"


def _upwards(start: Path) -> Path | None:
    for candidate in (start, *start.parents):
        if (candidate / MARKER).is_file() and (candidate / "terraform").is_dir():
            return candidate
    return None


def find_repo_root(explicit: str | os.PathLike | None = None) -> Path:
    """The checkout's root by the module's one rule (see the module docstring)."""
    given = explicit or os.environ.get("AEGIS_REPO")
    if given:
        root = Path(given).resolve()
        if not (root / MARKER).is_file():
            raise LabInputError(f"{root} is not an Aegis checkout (no {MARKER} there); "
                                "pass --repo or AEGIS_REPO pointing at the checkout's root")
        return root
    for start in (Path(__file__).resolve().parent, Path.cwd().resolve()):
        found = _upwards(start)
        if found is not None:
            return found
    raise LabInputError(f"cannot find the Aegis checkout (a directory holding {MARKER}): "
                        "run from inside it, or pass --repo / set AEGIS_REPO")


@dataclass(frozen=True)
class Paths:
    """The checkout the lab drives and the directory where it keeps its state."""

    repo_root: Path
    state_root: Path

    @classmethod
    def discover(cls, repo: str | os.PathLike | None = None,
                 state: str | os.PathLike | None = None) -> Paths:
        root = find_repo_root(repo)
        state_dir = state or os.environ.get("AEGIS_STATE_DIR") or root / ".state"
        return cls(root, Path(state_dir).resolve())

    # -- the checkout --------------------------------------------------------------
    @property
    def fleet_module(self) -> Path:
        return self.repo_root / "terraform" / "fleets" / "local"

    @property
    def terraform_cli_config(self) -> Path:
        return self.repo_root / "terraform" / "cli.tfrc"

    @property
    def ansible_cfg(self) -> Path:
        return self.repo_root / "ansible.cfg"

    @property
    def playbooks(self) -> Path:
        return self.repo_root / "playbooks"

    @property
    def bpf_build(self) -> Path:
        return self.repo_root / "bpf" / "build"

    @property
    def requirements(self) -> Path:
        return self.repo_root / "requirements.txt"

    @property
    def collections(self) -> Path:
        """The collections path ``scripts/bootstrap.sh`` makes: its
        ``ansible_collections/aegis/fleet`` is this checkout."""
        root = self.repo_root / ".state" / "collections"
        link = root / "ansible_collections" / "aegis" / "fleet"
        if not link.is_dir() or link.resolve() != self.repo_root:
            raise LabInputError(f"{link} does not point at {self.repo_root}; "
                                "run scripts/bootstrap.sh (it makes the collections path)")
        return root

    # -- the state ------------------------------------------------------------------
    @property
    def fleets(self) -> Path:
        return self.state_root / "fleets"

    @property
    def vms(self) -> Path:
        return self.state_root / "vms"

    @property
    def wheelhouse(self) -> Path:
        return self.state_root / "wheels" / "agent"

    @property
    def ansible_home(self) -> Path:
        return self.state_root / "ansible-home"

    @property
    def runs(self) -> Path:
        """Where ansible-runner keeps each play's private data dir and artifacts."""
        return self.state_root / "ansible-runs"

    @property
    def bin_dir(self) -> Path:
        """The directory of this interpreter's scripts (aegis-lab, aegis-controller, ansible)."""
        return Path(sys.executable).parent
