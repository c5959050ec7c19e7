"""Role READMEs carry the variables table generated from meta/argument_specs.yml."""

import importlib.util
import subprocess
import sys

import pytest

from harness import REPO

pytestmark = pytest.mark.unit


def test_role_readmes_match_their_argument_specs():
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "role_docs.py"), "--check"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def _role_yaml_loader():
    spec = importlib.util.spec_from_file_location("role_docs", REPO / "scripts" / "role_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.load_role_yaml


def test_every_default_is_typed_in_the_argument_spec():
    load = _role_yaml_loader()
    for role in (REPO / "roles").iterdir():
        defaults = load(role / "defaults" / "main.yml") or {}
        spec = load(role / "meta" / "argument_specs.yml")
        options = spec["argument_specs"]["main"]["options"]
        assert sorted(defaults) == sorted(k for k in options if "default" in options[k]), role
        for name, value in defaults.items():
            assert options[name]["default"] == value, name
