"""aegis.fleet.runtime_secret and the agent role's token hand-over: a secret reaches tmpfs
on the node and never a file on disk, on the control node or on the node.

The module runs for real through ansible-playbook: on the control node itself (connection
local) for what it writes and refuses, and on a lab node over SSH for where the secret
travels, with inotify watching every temporary directory on both sides while the play
runs (``tests/tempwatch.py``). The same watch first catches the token in the temporary
files of ``ansible.builtin.copy content=`` (what the role used before), so a blind watch
cannot pass."""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from aegis_controller.playbook import Ansible
from aegis_lab.playbook import ansible_env
from aegis_lab.podman import podman, podman_env
from conftest import RUN_PREFIX
from harness import PATHS

pytestmark = pytest.mark.integration
WATCHER = Path(__file__).resolve().parent.parent / "tempwatch.py"


def _playbook(path: Path, tasks: list[dict], hosts: str = "localhost",
              local: bool = True) -> Path:
    play = {"name": "runtime_secret", "hosts": hosts, "gather_facts": False, "tasks": tasks}
    if local:
        play["connection"] = "local"
    path.write_text(json.dumps([play]))
    return path


def _run_local(book: Path, secret: str, *flags: str, env: dict | None = None) -> tuple[dict, str]:
    """ansible-playbook on the control node with the JSON callback; the secret reaches the
    play through the environment (lookup env), never a file. Returns (results by task
    name, everything Ansible printed)."""
    run_env = ansible_env(PATHS)
    run_env.pop("ANSIBLE_INVENTORY", None)
    run_env.update({"ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
                    "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1", "AEGIS_TEST_SECRET": secret,
                    "ANSIBLE_LOCALHOST_WARNING": "0", "ANSIBLE_INVENTORY_UNPARSED_WARNING": "0"})
    run_env.update(env or {})
    proc = subprocess.run([str(Path(sys.executable).with_name("ansible-playbook")), str(book),
                           *flags], env=run_env, capture_output=True, text=True, timeout=300,
                          check=False)
    doc = json.loads(proc.stdout)
    results = {t["task"]["name"]: t["hosts"]["localhost"]
               for p in doc["plays"] for t in p["tasks"] if "localhost" in t["hosts"]}
    return results, proc.stdout + proc.stderr


def _secret_task(name: str, dest: Path | str, **extra) -> dict:
    pipelining = extra.pop("pipelining", True)
    args = {"dest": str(dest),
            "content": "{{ lookup('ansible.builtin.env', 'AEGIS_TEST_SECRET') }}\n"}
    args.update(extra.pop("args", {}))
    # No task-level no_log: the module must keep the secret out of its result by itself
    # (the JSON callback prints every result in full, its invocation included).
    return {"name": name, "aegis.fleet.runtime_secret": args,
            "ignore_errors": True, "vars": {"ansible_pipelining": pipelining}, **extra}


@pytest.fixture
def shm_dir() -> Iterator[Path]:
    """A private directory on tmpfs (/dev/shm) for this test."""
    path = Path("/dev/shm") / f"{RUN_PREFIX}-secret-{secrets.token_hex(3)}"
    path.mkdir(mode=0o700)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _fstype(path: Path) -> str:
    return subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_secret_goes_to_tmpfs_private_idempotent_and_never_shown(shm_dir: Path,
                                                                 tmp_path: Path) -> None:
    assert _fstype(shm_dir) == "tmpfs"
    secret = secrets.token_urlsafe(32)
    dest = shm_dir / "bootstrap-token"
    book = _playbook(tmp_path / "write.yml", [
        _secret_task("check", dest, check_mode=True, diff=True),
        _secret_task("write", dest, diff=True),
        _secret_task("again", dest),
        _secret_task("read-only", dest, args={"mode": "0400"}),
    ])
    results, printed = _run_local(book, secret)
    assert secret not in printed
    check, write, again, ro = (results[n] for n in ("check", "write", "again", "read-only"))
    assert check["changed"] and not check.get("failed"), check
    assert check["diff"]["before"] == "" and "content hidden" in check["diff"]["after"], check
    assert write["changed"] and write["fstype"] == "tmpfs" and write["mode"] == "0600", write
    assert again["changed"] is False, again
    assert ro["changed"] and ro["mode"] == "0400", ro
    st = dest.stat()
    assert dest.read_text() == secret + "\n"
    assert stat.S_IMODE(st.st_mode) == 0o400 and st.st_uid == 0 and st.st_gid == 0
    # nothing else was left beside it (the temporary name it was written under)
    assert [p.name for p in shm_dir.iterdir()] == ["bootstrap-token"]


def test_refuses_a_destination_not_on_tmpfs_or_through_a_symlink(shm_dir: Path,
                                                                 tmp_path: Path) -> None:
    secret = secrets.token_urlsafe(32)
    disk = PATHS.state_root / f"{RUN_PREFIX}-secret-disk"
    disk.mkdir(mode=0o700, exist_ok=True)
    try:
        assert _fstype(disk) not in ("tmpfs", "ramfs"), "need a directory on disk for this test"
        target = shm_dir / "target"
        target.write_text("unchanged\n")
        (shm_dir / "link").symlink_to(target)
        book = _playbook(tmp_path / "refuse.yml", [
            _secret_task("disk", disk / "token"),
            _secret_task("symlink", shm_dir / "link"),
        ])
        results, printed = _run_local(book, secret)
        assert secret not in printed
        on_disk = results["disk"]
        assert on_disk.get("failed"), on_disk
        assert f"dest: {disk / 'token'} is not on a memory filesystem" in on_disk["msg"], on_disk
        assert "Put it under a tmpfs such as /run. Nothing was written." in on_disk["msg"]
        assert list(disk.iterdir()) == []
        link = results["symlink"]
        assert link.get("failed") and "is a symbolic link; refusing" in link["msg"], link
        assert target.read_text() == "unchanged\n"
    finally:
        shutil.rmtree(disk, ignore_errors=True)


@pytest.mark.parametrize("how", ["pipelining off", "keep remote files"])
def test_refuses_to_run_unless_pipelined(shm_dir: Path, tmp_path: Path, how: str) -> None:
    secret = secrets.token_urlsafe(32)
    dest = shm_dir / "token"
    env = {}
    if how == "pipelining off":
        task = _secret_task("write", dest, pipelining=False)
    else:  # Ansible turns pipelining off to keep the module files it would write
        task = _secret_task("write", dest)
        env = {"ANSIBLE_KEEP_REMOTE_FILES": "1"}
    results, printed = _run_local(_playbook(tmp_path / "nopipe.yml", [task]), secret, env=env)
    res = results["write"]
    assert res.get("failed"), res
    assert "refuses to run without pipelining" in res["msg"], res
    assert "Set ansible_pipelining: true on the task" in res["msg"]
    assert "Nothing was sent" in res["msg"]
    assert not dest.exists()
    assert secret not in printed


# -- where the secret travels on a real run over SSH ----------------------------------------
class Watch:
    """tests/tempwatch.py running on the control node or (through podman exec) on a node."""

    def __init__(self, argv: list[str], secret: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=env)
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(secret.encode() + b"\n")
        self.proc.stdin.flush()
        ready = self.proc.stdout.readline()
        assert ready == b"ready\n", (ready, self.proc.stderr.read() if self.proc.stderr else "")

    def stop(self) -> dict:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.close()
        out = self.proc.stdout.read()
        self.proc.wait(timeout=30)
        return json.loads(out.decode().strip().splitlines()[-1])


@contextlib.contextmanager
def _watching(secret: str, control_dirs: list[Path], node: str,
              node_dirs: list[str]) -> Iterator[dict[str, dict]]:
    found: dict[str, dict] = {}
    control = Watch([sys.executable, str(WATCHER), *map(str, control_dirs)], secret)
    try:
        remote = Watch(["podman", "exec", "-i", node, "python3", "-c", WATCHER.read_text(),
                        *node_dirs], secret, env=podman_env())
    except BaseException:
        control.proc.kill()
        raise
    try:
        yield found
    finally:
        found["control"] = control.stop()
        found["node"] = remote.stop()


def _grep(root: Path, needle: bytes) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink() and needle in path.read_bytes():
            hits.append(str(path))
    return hits


@pytest.mark.e2e
def test_role_hands_the_token_over_without_a_file_on_disk_on_either_side(fleet, tmp_path):
    """The agent role's token step (tasks_from token.yml, as main.yml runs it) through
    ansible-runner, like the demo: the token is issued by a command in the play and must
    appear only in /run/aegis/bootstrap-token on the node."""
    node = f"{fleet.prefix}-node1"
    secret = secrets.token_urlsafe(32)
    keep = Path("/dev/shm") / f"{RUN_PREFIX}-issuer-{secrets.token_hex(3)}"
    keep.mkdir(mode=0o700)
    (keep / "token").write_text(secret)  # tmpfs: stands in for `aegis-controller token issue`
    issue = f"sh -c 'cat {keep / 'token'}' --"
    env = ansible_env(fleet.paths, fleet)
    local_tmp = Path(env["ANSIBLE_HOME"]) / "tmp"
    env["TMPDIR"] = str(tmp_path / "tmp")
    runs = tmp_path / "runs"
    control_dirs = [local_tmp, tmp_path / "tmp", runs]
    node_dirs = ["/root/.ansible/tmp", "/tmp", "/var/tmp"]
    old_dest = f"/run/{RUN_PREFIX}-old-token"
    ansible = Ansible(runs, env=env)
    assert podman("exec", node, "test", "-e", "/run/aegis/bootstrap-token",
                  check=False).returncode == 1
    try:
        # 1. What the role did before: copy content= leaves the token in temporary files.
        old = _playbook(tmp_path / "old.yml", [{
            "name": "copy content", "no_log": True,
            "ansible.builtin.copy": {
                "content": "{{ lookup('ansible.builtin.pipe', %r) }}\n" % (issue + " node1"),
                "dest": old_dest, "mode": "0600"}}], hosts="node1", local=False)
        with _watching(secret, control_dirs, node, node_dirs) as found:
            assert ansible.run(old, check=False).ok
        assert found["control"]["hits"], found  # the copy action's local temporary file
        assert any(h.startswith("/root/.ansible/tmp/") for h in found["node"]["hits"]), found

        # 2. The role's token step now.
        new = _playbook(tmp_path / "new.yml", [{
            "name": "token", "ansible.builtin.include_role": {
                "name": "aegis.fleet.agent", "tasks_from": "token.yml"},
            "vars": {"agent_bootstrap_token_command": issue, "agent_node_id": "node1"}}],
            hosts="node1", local=False)
        with _watching(secret, control_dirs, node, node_dirs) as found:
            result = ansible.run(new, check=False)
        assert result.ok, result.tail(40)
        assert result.changed >= 1
        assert found["control"]["hits"] == [] and found["node"]["hits"] == [], found
        # the watch saw the files the run did write (the module's code, unpacked in /tmp)
        assert found["node"]["seen"] > 0 and found["control"]["seen"] > 0, found
        assert _grep(runs, secret.encode()) == []  # runner artifacts: events, stdout, env
        assert secret not in result.stdout
        handed = podman("exec", node, "stat", "-c", "%a %U %F", "/run/aegis/bootstrap-token")
        assert handed.stdout.split() == ["600", "root", "regular", "file"], handed.stdout
        fs = podman("exec", node, "stat", "-f", "-c", "%T", "/run/aegis/bootstrap-token")
        assert fs.stdout.strip() == "tmpfs"
        assert podman("exec", node, "cat", "/run/aegis/bootstrap-token").stdout == secret + "\n"
    finally:
        podman("exec", node, "rm", "-f", "/run/aegis/bootstrap-token", old_dest, check=False)
        shutil.rmtree(keep, ignore_errors=True)
