"""The static checks of ``./aegis test``, each one command run in the background lane
(tests/lane.py) at the start of the run, beside the other tests: ruff, ``terraform fmt
-check``, ``ansible-lint --profile production`` (offline, with a throw-away
``ANSIBLE_HOME``, since it installs the collection it lints there), ``ansible-test
sanity`` (scripts/sanity.sh) and ``ansible-galaxy collection build``. A check passes when
its command exits 0; its whole output is in the lane's log and, on failure, in the
report."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from lane import Command, Job

from harness import REPO

pytestmark = pytest.mark.static

BIN = Path(sys.executable).parent


def _checks() -> dict[str, list[str]]:
    return {
        "ruff": [str(BIN / "ruff"), "check", "protocol", "agent", "controller", "plugins",
                 "tests", "scripts", "benchmarks", "lab"],
        "terraform-fmt": ["terraform", "fmt", "-check", "-recursive", "terraform"],
        "ansible-lint": ["sh", "-c", 'home=$(mktemp -d) && trap \'rm -rf "$home"\' EXIT && '
                         f'ANSIBLE_HOME="$home" ANSIBLE_LINT_OFFLINE=1 {BIN / "ansible-lint"} '
                         "--offline --profile production"],
        "ansible-test-sanity": ["scripts/sanity.sh"],
        "galaxy-build": ["sh", "-c", 'out=$(mktemp -d) && trap \'rm -rf "$out"\' EXIT && '
                         f'{BIN / "ansible-galaxy"} collection build --force '
                         '--output-path "$out" .'],
    }


CHECKS = list(_checks())


def _job(check: str) -> Job:
    env = dict(os.environ, PATH=f"{BIN}:{os.environ.get('PATH', '')}")
    cmd = Command(_checks()[check], cwd=REPO, env=env, timeout=900)
    return Job(f"static:{check}", cmd.run, order=1 + CHECKS.index(check), cancel=cmd.cancel)


def lane_jobs(items: list[pytest.Item]) -> list[Job]:
    return [_job(item.callspec.params["check"]) for item in items]


@pytest.mark.parametrize("check", CHECKS)
def test_static_check(check: str, lane) -> None:
    rc, output = lane(f"static:{check}", lambda: _job(check))
    assert rc == 0, output[-8000:]
