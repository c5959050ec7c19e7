"""`aegis-lab cleanup` also takes down the VM nodes of a prefix, its sub-prefixes' included
(a Molecule VM scenario's `at3164 01`-style prefix): before, a run stopped from outside
left its QEMU VM running and cleanup reported it as still present without removing it."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from aegis_lab.cleanup import vm_nodes

pytestmark = pytest.mark.unit


def test_the_vms_of_a_prefix_and_its_sub_prefixes_are_found(tmp_path: Path) -> None:
    for name in ("at316401-vm1", "at3164-vm2", "at3165-vm1", "xx3164-vm1"):
        (tmp_path / name).mkdir()
    (tmp_path / "at3164-stray-file").write_text("")
    found = vm_nodes(SimpleNamespace(vms=tmp_path), "at3164")  # type: ignore[arg-type]
    assert [(vm.prefix, vm.name) for vm in found] == [("at3164", "vm2"), ("at316401", "vm1")]
    assert vm_nodes(SimpleNamespace(vms=tmp_path / "none"), "at3164") == []  # type: ignore[arg-type]
