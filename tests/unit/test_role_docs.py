"""Role READMEs carry the variables table generated from meta/argument_specs.yml."""

import subprocess
import sys

import pytest

from harness import REPO

pytestmark = pytest.mark.unit


def test_role_readmes_match_their_argument_specs():
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "role_docs.py"), "--check"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_every_default_is_typed_in_the_argument_spec():
    import yaml

    for role in (REPO / "roles").iterdir():
        defaults = yaml.safe_load((role / "defaults" / "main.yml").read_text()) or {}
        spec = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())
        options = spec["argument_specs"]["main"]["options"]
        assert sorted(defaults) == sorted(k for k in options if "default" in options[k]), role
        for name, value in defaults.items():
            assert options[name]["default"] == value, name
