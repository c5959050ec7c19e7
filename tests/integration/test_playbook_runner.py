"""The ansible-runner wrapper (``aegis_controller.playbook``) on real, tiny playbooks run
on localhost (connection local): events in order, a failing task raises naming it,
timeout and cancel stop the run, artifacts stay under the given runs directory."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from aegis_controller.playbook import (
    Ansible,
    PlaybookCancelled,
    PlaybookError,
    PlaybookNotFound,
    PlaybookTimeout,
    PlayEvent,
)

pytestmark = pytest.mark.integration

HEADER = """
- name: Tiny
  hosts: localhost
  connection: local
  gather_facts: false
  tasks:
"""
TASKS = {
    "ok": """
    - name: Say hi
      ansible.builtin.debug:
        msg: hi
    - name: Change something
      ansible.builtin.command: "true"
    - name: Set a fact
      ansible.builtin.set_fact:
        answer: 42
""",
    "fail": """
    - name: Say hi
      ansible.builtin.debug:
        msg: hi
    - name: Break on purpose
      ansible.builtin.fail:
        msg: the node is not ready
    - name: Never reached
      ansible.builtin.debug:
        msg: unreachable
""",
    "slow": """
    - name: Say hi
      ansible.builtin.debug:
        msg: hi
    - name: Take a long time
      ansible.builtin.command: sleep {seconds}
""",
}


@pytest.fixture
def ansible(tmp_path: Path) -> Ansible:
    env = dict(os.environ, ANSIBLE_INVENTORY="localhost,", ANSIBLE_LOCALHOST_WARNING="False",
               ANSIBLE_HOME=str(tmp_path / "ansible-home"))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("ANSIBLE_CONFIG", None)
    return Ansible(tmp_path / "runs", env=env)


def _play(tmp_path: Path, kind: str, seconds: str = "60") -> Path:
    path = tmp_path / f"{kind}.yml"
    path.write_text(HEADER + TASKS[kind].replace("{seconds}", seconds))
    return path


def _running(cmdline: bytes) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and (entry / "cmdline").read_bytes() == cmdline:
                pids.append(int(entry.name))
    return pids


def _unique_seconds() -> str:
    """A sleep duration no other process on the machine uses, to find the task's process."""
    return f"60.{os.getpid()}{time.monotonic_ns() % 100000}"


def test_events_arrive_in_order_and_stats_come_from_the_runner(ansible, tmp_path):
    seen: list[PlayEvent] = []
    result = ansible.run(_play(tmp_path, "ok"), on_event=seen.append)
    assert result.ok and result.rc == 0
    counters = [e.counter for e in seen]
    assert counters == sorted(counters) and len(set(counters)) == len(counters)
    assert [e.task for e in seen if e.is_task_start] == ["Say hi", "Change something",
                                                         "Set a fact"]
    assert [(e.task, e.status) for e in result.results] == [
        ("Say hi", "ok"), ("Change something", "changed"), ("Set a fact", "ok")]
    assert result.stats["localhost"].ok == 3 and result.stats["localhost"].changed == 1
    assert result.failures == []
    # the run's private data dir is under the runs dir; the environment is not kept
    assert result.artifact_dir is not None
    assert result.artifact_dir.is_relative_to(tmp_path / "runs")
    assert not (result.artifact_dir.parent.parent / "env").exists()
    assert "TASK [Say hi]" in result.stdout


def test_a_failing_task_raises_naming_host_task_and_message(ansible, tmp_path):
    with pytest.raises(PlaybookError, match="Break on purpose") as err:
        ansible.run(_play(tmp_path, "fail"))
    assert (err.value.host, err.value.task) == ("localhost", "Break on purpose")
    assert err.value.message == "the node is not ready"
    assert err.value.result is not None
    assert err.value.result.stats["localhost"].failures == 1
    assert "Never reached" not in [e.task for e in err.value.result.results]
    # without check, the failure is in the result instead
    result = ansible.run(_play(tmp_path, "fail"), check=False)
    assert not result.ok
    assert [(f.task, f.message) for f in result.failures] == [
        ("Break on purpose", "the node is not ready")]


def test_timeout_stops_the_run(ansible, tmp_path):
    seconds = _unique_seconds()
    started = time.monotonic()
    with pytest.raises(PlaybookTimeout):
        ansible.run(_play(tmp_path, "slow", seconds), timeout=5)
    assert time.monotonic() - started < 30
    # the task's own process (in a session of its own) is stopped too
    assert _running(b"sleep\0" + seconds.encode() + b"\0") == []


def test_cancel_stops_the_run_once_the_slow_task_starts(ansible, tmp_path):
    cancel = threading.Event()

    def on_event(event: PlayEvent) -> None:
        if event.is_task_start and event.task == "Take a long time":
            cancel.set()

    seconds = _unique_seconds()
    started = time.monotonic()
    with pytest.raises(PlaybookCancelled):
        ansible.run(_play(tmp_path, "slow", seconds), on_event=on_event, cancel=cancel)
    assert time.monotonic() - started < 30
    assert _running(b"sleep\0" + seconds.encode() + b"\0") == []


def test_extra_var_files_and_tags_reach_ansible_playbook(ansible, tmp_path):
    (tmp_path / "vars.json").write_text('{"greeting": "from a file"}')
    play = tmp_path / "tagged.yml"
    play.write_text(HEADER + """
    - name: Greet
      ansible.builtin.debug:
        msg: "{{ greeting }} and {{ other }}"
      tags: [greet]
    - name: Untagged
      ansible.builtin.debug:
        msg: not selected
""")
    result = ansible.run(play, extra_files=[tmp_path / "vars.json"], tags="greet",
                         extravars={"other": "a dict"})
    assert [e.task for e in result.results] == ["Greet"]
    assert result.per_host()["localhost"]["msg"] == "from a file and a dict"


def test_host_key_checking_stays_on_unless_the_caller_turns_it_off(ansible, tmp_path):
    echo = "echo checking=$ANSIBLE_HOST_KEY_CHECKING"
    res = ansible.module("localhost", "ansible.builtin.shell", echo, inventory="localhost,")
    assert res.per_host()["localhost"]["stdout"] == "checking=True"
    off = Ansible(tmp_path / "runs", env={**ansible.env, "ANSIBLE_HOST_KEY_CHECKING": "False"})
    res = off.module("localhost", "ansible.builtin.shell", echo, inventory="localhost,")
    assert res.per_host()["localhost"]["stdout"] == "checking=False"


def test_run_async_and_module(ansible, tmp_path):
    run = ansible.run_async(_play(tmp_path, "ok"))
    assert run.wait(timeout=120).ok and run.done()
    failing = ansible.run_async(_play(tmp_path, "fail"))
    with pytest.raises(PlaybookError, match="Break on purpose"):
        failing.wait(timeout=120)
    ping = ansible.module("localhost", "ansible.builtin.ping", inventory="localhost,")
    assert ping.per_host()["localhost"]["ping"] == "pong"
    with pytest.raises(PlaybookNotFound):
        ansible.run(tmp_path / "missing.yml")


def test_the_environment_is_not_kept_in_the_artifacts(ansible, tmp_path, monkeypatch):
    """ansible-runner writes the whole environment of the run, inherited variables too,
    into ``artifacts/<id>/command``: a token in the caller's environment would stay on
    disk after the run. Nothing of the environment may remain under the runs dir."""
    marker = "aegis-env-marker-7f3c2a91"
    monkeypatch.setenv("AEGIS_TEST_VAULT_TOKEN", marker)  # inherited by the runner
    own = Ansible(tmp_path / "runs", env={**ansible.env, "AEGIS_TEST_OWN_SECRET": marker})
    result = own.run(_play(tmp_path, "ok"))
    assert result.ok
    command = result.artifact_dir / "command"
    assert command.is_file()  # what ran stays readable, without the environment
    assert "ansible-playbook" in command.read_text()
    found = [p for p in (tmp_path / "runs").rglob("*")
             if p.is_file() and marker.encode() in p.read_bytes()]
    assert found == [], found


def test_gathered_facts_do_not_put_the_environment_on_disk(ansible, tmp_path):
    """Gathered facts hold ``ansible_env`` (the play's whole environment); the runner's
    default jsonfile fact cache would write it under the artifacts. Facts stay in memory."""
    marker = "aegis-fact-marker-5d21b7e0"
    own = Ansible(tmp_path / "runs", env={**ansible.env, "AEGIS_TEST_OWN_SECRET": marker})
    play = tmp_path / "facts.yml"
    play.write_text(HEADER.replace("gather_facts: false", "gather_facts: true")
                    + "    - name: Use a gathered fact\n"
                    + "      ansible.builtin.assert:\n"
                    + "        that: ansible_facts.env.AEGIS_TEST_OWN_SECRET | length > 0\n")
    result = own.run(play)
    assert result.ok, result.tail()
    found = [p for p in (tmp_path / "runs").rglob("*")
             if p.is_file() and marker.encode() in p.read_bytes()]
    assert found == [], found


def test_a_run_going_on_is_not_removed_by_another_process_making_room(tmp_path):
    """Several processes share one runs dir (the test lanes, aegis-lab, the controller) and
    each keeps only the last ``keep`` runs: a long run started by one is not removed by the
    others' new runs, nor right after it ends; finished runs past the grace period are.
    (CI: the child run's converge lost its artifacts dir mid-run and the runner failed.)"""
    env = dict(os.environ, ANSIBLE_INVENTORY="localhost,", ANSIBLE_LOCALHOST_WARNING="False",
               ANSIBLE_HOME=str(tmp_path / "ansible-home"))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("ANSIBLE_CONFIG", None)
    runs = tmp_path / "runs"
    long_one = Ansible(runs, env=env, keep=2)
    others = Ansible(runs, env=env, keep=2)
    slow = _play(tmp_path, "slow", "6")
    started = long_one.run_async(slow)
    deadline = time.monotonic() + 30
    while not any(runs.glob("*/artifacts/*/job_events/*.json")):
        assert time.monotonic() < deadline, "the slow run did not start"
        time.sleep(0.1)
    for _ in range(3):
        assert others.run(_play(tmp_path, "ok")).ok
    result = started.wait(60)
    assert result.ok, result.tail()
    assert result.artifact_dir is not None and (result.artifact_dir / "status").is_file()
    # just ended: still there for its caller after another run made room, though it is
    # the oldest run in the dir (its dir's time moved an hour back)
    private = result.artifact_dir.parent.parent
    os.utime(private, (time.time() - 3600, time.time() - 3600))
    assert others.run(_play(tmp_path, "ok")).ok
    assert result.artifact_dir.is_dir()
    # past the grace period it goes like any other (every run's end moved an hour back)
    for lock in runs.glob("*/.aegis-run.lock"):
        os.utime(lock, (time.time() - 3600, time.time() - 3600))
    assert others.run(_play(tmp_path, "ok")).ok
    assert not result.artifact_dir.exists()
    assert len([p for p in runs.iterdir() if not p.name.startswith(".")]) <= 2
