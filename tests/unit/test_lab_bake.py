"""The bake's inputs: its variables file and the tag (hash) the baked image gets."""

from __future__ import annotations

from pathlib import Path

import pytest

from aegis_lab.bake import LAB_BAKE_VARS, bake_digest, bake_variables, load_variables
from aegis_lab.naming import LabInputError
from harness import PATHS

pytestmark = pytest.mark.unit


def test_variables_file_goes_on_top_of_the_lab_defaults(tmp_path: Path) -> None:
    f = tmp_path / "vars.yml"
    f.write_text("harden_sshd_port: 2222\nharden_nftables_allow_controller: true\n")
    merged = bake_variables(load_variables(f))
    assert merged["harden_sshd_port"] == 2222
    assert merged["harden_nftables_allow_controller"] is True
    assert merged["harden_nftables_management_networks"] == \
        LAB_BAKE_VARS["harden_nftables_management_networks"]
    assert load_variables(None) == {}


@pytest.mark.parametrize(("text", "message"), [
    ("- a\n- b\n", "must hold a mapping of variable names"),
    ("a: [\n", "is not valid YAML"),
])
def test_bad_variables_files_are_refused(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "vars.yml"
    f.write_text(text)
    with pytest.raises(LabInputError, match=message):
        load_variables(f)
    with pytest.raises(LabInputError, match="not found"):
        load_variables(tmp_path / "missing.yml")


def test_the_tag_follows_the_base_image_and_the_variables() -> None:
    one = bake_digest(PATHS, "localhost/aegis-node:aaaa", bake_variables())
    assert len(one) == 12 and int(one, 16) >= 0
    assert bake_digest(PATHS, "localhost/aegis-node:aaaa", bake_variables()) == one
    assert bake_digest(PATHS, "localhost/aegis-node:bbbb", bake_variables()) != one
    assert bake_digest(PATHS, "localhost/aegis-node:aaaa",
                       bake_variables({"harden_sshd_port": 2222})) != one
