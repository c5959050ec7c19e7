"""The fleet files mounted into the execution environment are readable by the EE's user
(uid 1000, group root) whatever this process's umask: CI's EE runs found no host key
because the controller CLI, called in-process by an earlier test, had left umask 077 and
the ``ssh`` directory came out 0700."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from types import SimpleNamespace

from harness_ee import FLEET_MOUNT, fleet_in_ee


def test_every_mounted_path_is_open_to_the_root_group_under_umask_077(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "id").write_text("key")
    (src / "id").chmod(0o600)
    (src / "known_hosts").write_text("10.0.0.10 ssh-ed25519 AAAA\n")
    fleet = SimpleNamespace(ssh_key=src / "id", known_hosts=src / "known_hosts",
                            prefix="atzzzz00", info=lambda: {"nodes": {}})
    where = tmp_path / "where"
    where.mkdir()
    old = os.umask(0o077)
    try:
        with fleet_in_ee(fleet, where) as seen:  # type: ignore[arg-type]
            mount = where / "fleet"
            for path in (mount, mount / "ssh"):
                assert stat.S_IMODE(path.stat().st_mode) == 0o750, path
            for path in (mount / "ssh" / "id_ed25519", mount / "ssh" / "known_hosts",
                         mount / "outputs.json"):
                assert stat.S_IMODE(path.stat().st_mode) & 0o040, path
            output = json.loads((mount / "outputs.json").read_text())["fleet"]["value"]
            assert output["known_hosts"] == f"{FLEET_MOUNT}/ssh/known_hosts"
            assert seen.options == (f"--volume={mount}:{FLEET_MOUNT}:ro",)
        assert not mount.exists()
    finally:
        os.umask(old)
