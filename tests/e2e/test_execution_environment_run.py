"""Playbooks of this collection run INSIDE the locally built execution environment (EE)
through ansible-runner's container mode — the way AWX runs a job template.

The EE is built (or reused, when its definition, base recipe and collection content are
unchanged) by the session fixture ``execution_environment`` (tests/conftest.py, shared with
the recovery playbooks' runs in the EE) with ``aegis_lab.ee``: the base
image from debootstrap, then ``ansible-builder build`` with podman, aegis.fleet built from
this checkout. The runs go through the controller's own runner
(:class:`aegis_controller.playbook.Ansible` with a :class:`Container`), the one the
recovery engine uses.

Add a recovery playbook's failure path to ``FAILURE_CASES``: the case is skipped only while
its playbook is not in the tree.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from aegis_controller.playbook import (
    Ansible,
    Container,
    PlaybookError,
    PlaybookTimeout,
    PlayResult,
)
from aegis_lab.ee import (
    LABEL_FILES,
    LABEL_VERSION,
    EEImage,
    build_collection,
    ensure_ee,
    image_labels,
)
from aegis_lab.podman import containers_with_label, podman
from conftest import sub_prefix
from harness import PATHS, REPO, OpenBao
from harness_ee import ee_container, say

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

PROBE = REPO / "tests" / "fixtures" / "ee" / "probe.yml"


@dataclass(frozen=True)
class FailureCase:
    """A playbook run in the EE that must fail with the playbook's own clear message."""

    id: str
    playbook: Path
    message: str                      # a fragment of the failing task's message
    extravars: dict[str, Any] = field(default_factory=dict)


FAILURE_CASES = [
    # quarantine.yml is an AWX job template: without its target it must refuse to run,
    # naming the extra var to set (never prompt, never fall back to every host).
    FailureCase("quarantine-without-target", REPO / "playbooks" / "quarantine.yml",
                "aegis_target"),
]


@pytest.fixture
def in_ee(execution_environment: EEImage, engine_env: None,
          tmp_path: Path) -> Iterator[tuple[str, Path, Container]]:
    """A per-test prefix, a runs dir, and the EE; every container the test started with
    the prefix is removed at the end, even on failure."""
    prefix = sub_prefix()
    with ee_container(execution_environment, prefix, "--network=host") as container:
        yield prefix, tmp_path / "runs", container


def _probe_report(result: PlayResult) -> dict[str, Any]:
    for event in result.results:
        msg = ((event.raw.get("event_data") or {}).get("res") or {}).get("msg")
        if isinstance(msg, dict) and "aegis_probe" in msg:
            return msg["aegis_probe"]
    raise AssertionError(f"the probe's report is not among the events:\n{result.tail()}")


def _files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def test_probe_runs_inside_the_ee(in_ee, execution_environment: EEImage, openbao: OpenBao,
                                  tmp_path: Path) -> None:
    prefix, runs, container = in_ee
    # the run's environment: the server's address and its token (a secret)
    ansible = Ansible(runs, env={"BAO_ADDR": openbao.addr, "BAO_TOKEN": openbao.token},
                      suppress_env_files=True, container=container)
    started = time.monotonic()
    result = ansible.run(PROBE, timeout=600)
    seconds = time.monotonic() - started
    say(f"probe run in {execution_environment.ref}: {seconds:.1f} s")
    assert result.ok, result.tail()
    report = _probe_report(result)

    # inside podman's container, from the EE image, not on this host (which is Debian
    # too, but runs Ansible from .venv as root and has no /run/.containerenv)
    assert report["container_marker"] is True
    assert report["virtualization_type"] == "podman"
    assert (report["os_id"], report["os_release"]) == ("debian", "bookworm")
    assert report["python"] == "/usr/bin/python3"
    assert int(report["uid"]) == 1000, "the EE's own user (options.user), not root"

    # the collection inside is this checkout's: galaxy.yml's version and its content
    galaxy = yaml.safe_load((REPO / "galaxy.yml").read_text())
    fresh = build_collection(PATHS, tmp_path / "collection")
    assert report["collection_version"] == str(galaxy["version"])
    assert report["collection_files_sha256"] == fresh.files_sha256, (
        "the EE holds another aegis.fleet than this checkout's")
    assert report["files_json_sha256"] == fresh.files_sha256
    labels = image_labels(execution_environment.ref)
    assert labels[LABEL_FILES] == fresh.files_sha256
    assert labels[LABEL_VERSION] == str(galaxy["version"])

    # the collection's filter and a module with its Python dependency (hvac) work there
    assert report["covers"] is True
    assert report["vault_version"], report

    # no container of the run is left, and the token is nowhere in what the run left
    assert containers_with_label(f"aegis.prefix={prefix}") == []
    files = _files_under(runs)
    assert any(p.name == "stdout" for p in files), "the artifacts are kept for reading"
    assert not [p for p in files if p.name == "env.list"], "podman's --env-file is removed"
    leaking = [str(p) for p in files if openbao.token.encode() in p.read_bytes()]
    assert leaking == [], f"the token is in the run's files: {leaking}"


def test_a_second_run_reuses_the_image(execution_environment: EEImage) -> None:
    """Nothing changed since the session fixture built it: the same image, no build."""
    started = time.monotonic()
    again = ensure_ee(PATHS)
    seconds = time.monotonic() - started
    say(f"ee build with nothing changed: {seconds:.1f} s")
    assert seconds < 60, "a build with nothing changed only checks (collection build, hash)"
    assert not again.built and not again.base_built
    assert again.ref == execution_environment.ref
    ids = {podman("image", "inspect", "--format", "{{.Id}}", ref).stdout.strip()
           for ref in (again.ref, again.latest)}
    assert len(ids) == 1, "aegis-ee:latest is the image of this checkout's hash"


@pytest.mark.parametrize("case", FAILURE_CASES, ids=lambda c: c.id)
def test_playbook_fails_clearly_inside_the_ee(case: FailureCase, in_ee) -> None:
    if not case.playbook.is_file():
        pytest.skip(f"{case.playbook.relative_to(REPO)} is not in this tree yet")
    prefix, runs, container = in_ee
    ansible = Ansible(runs, env={}, suppress_env_files=True, container=container)
    with pytest.raises(PlaybookError) as failed:
        ansible.run(case.playbook, extravars=case.extravars, timeout=600)
    assert case.message in failed.value.message, failed.value
    assert failed.value.result is not None and failed.value.result.rc != 0
    assert containers_with_label(f"aegis.prefix={prefix}") == []


def test_engine_settings_stay_out_of_the_container(in_ee) -> None:
    """The lab's podman settings reach the engine (this process's environment), not the
    run: the container's environment holds only what the run was given."""
    _, runs, container = in_ee
    assert os.environ["CONTAINERS_CONF"]
    ansible = Ansible(runs, env={"AEGIS_PROBE_VALUE": "visible"}, suppress_env_files=True,
                      container=container)
    result = ansible.module("localhost", "ansible.builtin.command", "env", timeout=300)
    out = result.per_host()["localhost"]
    assert out.get("rc") == 0, out
    env = dict(line.split("=", 1) for line in out["stdout_lines"] if "=" in line)
    assert env.get("AEGIS_PROBE_VALUE") == "visible"
    assert "CONTAINERS_CONF" not in env and "CONTAINERS_STORAGE_CONF" not in env


def test_a_timeout_removes_the_runs_container(in_ee, tmp_path: Path) -> None:
    """The events' pids are the container's own: a timeout stops the run by removing its
    container (never by killing a host pid), and nothing of it is left."""
    prefix, runs, container = in_ee
    project = tmp_path / "project"
    project.mkdir()
    project.chmod(0o755)  # read by the EE's own user
    slow = project / "slow.yml"
    slow.write_text("- name: Slow\n  hosts: localhost\n  connection: local\n"
                    "  gather_facts: false\n  tasks:\n"
                    "    - name: Take long\n      ansible.builtin.command: sleep 300\n")
    slow.chmod(0o644)
    ansible = Ansible(runs, env={}, suppress_env_files=True, container=container)
    started = time.monotonic()
    with pytest.raises(PlaybookTimeout):
        ansible.run(slow, timeout=8)
    assert time.monotonic() - started < 90
    assert containers_with_label(f"aegis.prefix={prefix}") == []
