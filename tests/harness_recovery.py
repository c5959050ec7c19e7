"""The recovery settings of the STAND-IN fleet (tests/fixtures/tf_standin_fleet and
tests/fixtures/standin_playbooks), shared by the tests of the real steps and of a real
``serve --recovery-config``: the files it names are relative to the settings file's
directory (``module``, ``tf-data``, ``fleet.tfstate``, ``fleet.tfvars.json``,
``inventory.yml``, ``agent-vars.yml``, ``bundles``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from harness import PATHS

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def standin_settings(base: Path, standin: Path, recipient: str, *, timeout_s: float,
                     lock_timeout_s: float, **top: Any) -> dict[str, Any]:
    """The settings file's content for a world in ``base`` whose stand-in nodes write under
    ``standin``; ``top`` adds top-level keys (``lease_s``...)."""
    return {
        "guard_rails": {"max_in_flight": 1},
        "terraform": {"root": "module", "data_dir": "tf-data", "state": "fleet.tfstate",
                      "var_file": "fleet.tfvars.json", "timeout_s": timeout_s,
                      "lock_timeout_s": lock_timeout_s,
                      "cli_config": str(PATHS.terraform_cli_config)},
        "ansible": {"inventory": "inventory.yml",
                    "playbooks": str(FIXTURES / "standin_playbooks"),
                    "agent_vars_file": "agent-vars.yml", "timeout_s": timeout_s,
                    "golden_path": str(standin / "golden.json"),
                    "env": {"ANSIBLE_HOME": str(base / "ansible-home"),
                            "ANSIBLE_LOCALHOST_WARNING": "False",
                            "PATH": f"{Path(sys.executable).parent}{os.pathsep}"
                                    f"{os.environ.get('PATH', '')}"}},
        "forensics": {"recipient": recipient, "dest": "bundles"},
        **top,
    }
