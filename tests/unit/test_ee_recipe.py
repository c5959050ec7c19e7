"""aegis_lab.ee without building anything: what makes the EE's hash and the checks of the
definition that name what to fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from aegis_lab.ee import Collection, EEBuildError, _collection_src, base_recipe, ee_hash
from aegis_lab.image import recipe_hash
from harness import REPO

pytestmark = pytest.mark.unit

DEFINITION = yaml.safe_load((REPO / "execution-environment.yml").read_text())
VERSION = yaml.safe_load((REPO / "galaxy.yml").read_text())["version"]


def test_the_definition_names_the_tarball_of_galaxy_yml_version() -> None:
    assert _collection_src(DEFINITION, VERSION) == f".state/ee/aegis-fleet-{VERSION}.tar.gz"


def test_a_version_bump_without_the_definition_says_what_to_update() -> None:
    with pytest.raises(EEBuildError, match=r"aegis-fleet-9\.9\.9\.tar\.gz.*update "
                                           r"additional_build_files"):
        _collection_src(DEFINITION, "9.9.9")


def test_a_definition_without_the_tarball_is_refused() -> None:
    with pytest.raises(EEBuildError, match="no additional_build_files entry"):
        _collection_src({**DEFINITION, "additional_build_files": []}, VERSION)


def test_the_hash_follows_definition_base_and_collection_content() -> None:
    col = Collection(Path("x.tar.gz"), VERSION, "a" * 64)
    text = (REPO / "execution-environment.yml").read_text()
    one = ee_hash(text, "localhost/aegis-ee-base:1", col)
    assert one == ee_hash(text, "localhost/aegis-ee-base:1", col)
    assert one != ee_hash(text + "\n# changed\n", "localhost/aegis-ee-base:1", col)
    assert one != ee_hash(text, "localhost/aegis-ee-base:2", col)
    assert one != ee_hash(text, "localhost/aegis-ee-base:1",
                          Collection(col.tarball, VERSION, "b" * 64))


def test_the_base_recipe_is_its_own_and_leaves_the_node_image_alone() -> None:
    mirror = "http://deb.debian.org/debian"
    base = base_recipe(mirror)
    assert base.digest != base_recipe("http://mirror.invalid/debian").digest
    assert base.script.is_file() and base.script.stat().st_mode & 0o111
    # the EE recipe lives in recipe/ee/: the node image's hash reads only recipe/'s files
    assert base.digest != recipe_hash(mirror)
    assert base.script.parent.name == "ee"
