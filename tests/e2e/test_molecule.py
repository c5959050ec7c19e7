"""Molecule scenarios run for real: lab nodes through Terraform, converge, idempotence,
verify, destroy."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from aegis_lab.cleanup import leftovers
from aegis_lab.playbook import ansible_env
from conftest import sub_prefix
from harness import PATHS, REPO

pytestmark = pytest.mark.e2e
SCENARIOS = sorted(p.parent.name for p in (REPO / "molecule").glob("*/molecule.yml"))


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_molecule_scenario(scenario):
    prefix = sub_prefix()
    env = ansible_env(PATHS)
    env["AEGIS_MOLECULE_PREFIX"] = prefix
    env.pop("ANSIBLE_INVENTORY", None)
    molecule = str(Path(sys.executable).with_name("molecule"))
    proc = subprocess.run([molecule, "test", "-s", scenario], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1200, check=False)
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, tail
    out = re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout + proc.stderr)
    for step in ("converge", "idempotence", "verify"):
        assert f"{scenario} ➜ {step}: Executed: Successful" in out, tail
    summary = re.search(r"actions=(\d+)\s+successful=(\d+).*failed=(\d+)", out)
    assert summary and summary[1] == summary[2] and summary[3] == "0", tail
    assert leftovers(prefix) == []
