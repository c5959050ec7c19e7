"""The lab's one rule for the checkout it drives, and the paths derived from it."""

from __future__ import annotations

import pytest

from aegis_lab.naming import LabInputError
from aegis_lab.paths import Paths, find_repo_root
from harness import REPO

pytestmark = pytest.mark.unit


def test_the_installed_checkout_is_found_without_help(monkeypatch, tmp_path):
    monkeypatch.delenv("AEGIS_REPO", raising=False)
    monkeypatch.delenv("AEGIS_STATE_DIR", raising=False)
    monkeypatch.chdir(tmp_path)  # not from the working directory: from the package
    paths = Paths.discover()
    assert paths.repo_root == REPO
    assert paths.state_root == REPO / ".state"
    assert paths.fleet_module == REPO / "terraform" / "fleets" / "local"
    assert (paths.fleet_module / "main.tf").is_file()


def test_explicit_repo_and_state_dir_win(monkeypatch, tmp_path):
    monkeypatch.setenv("AEGIS_REPO", str(tmp_path / "nowhere"))
    monkeypatch.setenv("AEGIS_STATE_DIR", str(tmp_path / "state"))
    paths = Paths.discover(REPO)
    assert paths.repo_root == REPO
    assert paths.state_root == tmp_path / "state"
    assert paths.fleets == tmp_path / "state" / "fleets"
    with pytest.raises(LabInputError, match="not an Aegis checkout"):
        find_repo_root()  # AEGIS_REPO points at a directory without galaxy.yml


def test_collections_path_is_the_one_bootstrap_made(tmp_path):
    paths = Paths(REPO, tmp_path)
    link = paths.collections / "ansible_collections" / "aegis" / "fleet"
    assert link.resolve() == REPO
    (tmp_path / "galaxy.yml").write_text("")
    with pytest.raises(LabInputError, match=r"run scripts/bootstrap\.sh"):
        _ = Paths(tmp_path, tmp_path).collections
