"""The node image cache keeps the tarballs of the last few recipe versions: two checkouts
of different versions on one machine (a developer's worktree and a CI clone) no longer
delete each other's image and rebuild it in turn (seen: each rebuild took minutes)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aegis_lab.image import KEEP_TARBALLS, prune_tarballs

pytestmark = pytest.mark.unit


def test_the_most_recently_used_tarballs_of_a_recipe_stay(tmp_path: Path) -> None:
    made = []
    for i in range(KEEP_TARBALLS + 2):
        path = tmp_path / f"aegis-node-{i:012x}.tar.zst"
        path.write_bytes(b"x")
        os.utime(path, (1000 + i, 1000 + i))
        made.append(path)
    other = tmp_path / "aegis-vm-000000000000.tar.zst"
    other.write_bytes(b"x")
    os.utime(made[0], (5000, 5000))  # the oldest build, used again just now
    removed = prune_tarballs(tmp_path, "aegis-node")
    assert sorted(removed) == sorted(made[1:3])
    assert {p.name for p in tmp_path.iterdir()} == {
        made[0].name, *(p.name for p in made[3:]), other.name}


def test_a_bare_image_asked_without_a_bad_package_name_is_refused_before_building() -> None:
    from aegis_lab.fleet import LocalFleet
    from aegis_lab.image import ImageBuildError, ensure_image
    from aegis_lab.naming import LabInputError
    from aegis_lab.paths import Paths

    with pytest.raises(ImageBuildError, match="not a Debian package name: aide;rm"):
        ensure_image(without=["aide;rm", "fail2ban"])
    fleet = LocalFleet("atbare", Paths.discover())
    with pytest.raises(LabInputError, match="baked image or from a bare one"):
        fleet.up(size=1, baked=True, without=["aide"])
    assert not fleet.dir.exists()  # refused before anything was made
