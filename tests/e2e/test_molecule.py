"""Molecule scenarios run for real: lab nodes through Terraform, converge, idempotence,
verify, destroy."""

import re
import sys
from pathlib import Path

import pytest
from lane import Command, Job

from aegis_lab.cleanup import leftovers
from aegis_lab.playbook import ansible_env
from conftest import sub_prefix
from harness import PATHS, REPO

pytestmark = pytest.mark.e2e
SCENARIOS = sorted(p.parent.name for p in (REPO / "molecule").glob("*/molecule.yml"))
#: the lane runs the longest first (the VM scenario emulates its CPU: about 7 min)
LANE_ORDER = {"harden_vm": 20, "harden": 40, "agent": 50, "smoke": 60}


def _job(scenario: str) -> Job:
    """``molecule test -s SCENARIO`` under a fresh prefix; cancelled, it runs the
    scenario's destroy."""
    prefix = sub_prefix()
    env = ansible_env(PATHS)
    env["AEGIS_MOLECULE_PREFIX"] = prefix
    env.pop("ANSIBLE_INVENTORY", None)
    molecule = str(Path(sys.executable).with_name("molecule"))
    cmd = Command([molecule, "test", "-s", scenario], cwd=REPO, env=env, timeout=1200,
                  cleanup=[molecule, "destroy", "-s", scenario])
    return Job(f"molecule:{scenario}", lambda say: (prefix, *cmd.run(say)),
               order=LANE_ORDER.get(scenario, 90), cancel=cmd.cancel)


def lane_jobs(items: list[pytest.Item]) -> list[Job]:
    return [_job(item.callspec.params["scenario"]) for item in items]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_molecule_scenario(scenario, lane):
    prefix, rc, output = lane(f"molecule:{scenario}", lambda: _job(scenario))
    tail = output[-6000:]
    assert rc == 0, tail
    out = re.sub(r"\x1b\[[0-9;]*m", "", output)
    for step in ("converge", "idempotence", "verify"):
        # molecule logs "harden ➜ verify: Executed: Successful" on some terminals and
        # "[harden > verify] Executed: Successful" on others (seen with a bare environment)
        assert re.search(rf"(?:{scenario} ➜ {step}:|\[{scenario} > {step}\]) Executed: Successful",
                         out), tail
    summary = re.search(r"actions=(\d+)\s+successful=(\d+).*failed=(\d+)", out)
    assert summary and summary[1] == summary[2] and summary[3] == "0", tail
    assert leftovers(prefix) == []
