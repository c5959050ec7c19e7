"""The command lines others call keep working: Terraform's local-exec (node, bridge),
Molecule (fleet up, cleanup, wheels, controller up, vm up/down), scripts (env, demo)."""

from __future__ import annotations

import pytest

from aegis_lab.cli import build_parser

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("argv", "command"), [
    ("node create --spec-env AEGIS_NODE_SPEC", "cmd_node_create"),
    ("node destroy --spec-env AEGIS_NODE_SPEC", "cmd_node_destroy"),
    ("bridge up --prefix ab --network 10.213.7.0/24", "cmd_bridge_up"),
    ("bridge down --prefix ab", "cmd_bridge_down"),
    ("fleet up --prefix aegismol --names instance,other", "cmd_fleet_up"),
    ("fleet up --prefix aegis --size 3", "cmd_fleet_up"),
    ("fleet up --prefix aegismol --names node1 --caps agent", "cmd_fleet_up"),
    ("fleet up --prefix aegis --size 3 --caps admin", "cmd_fleet_up"),
    ("fleet up --prefix aegis --size 3 --caps admin --baked", "cmd_fleet_up"),
    ("fleet up --prefix aegis --size 3 --unbaked", "cmd_fleet_up"),
    ("image bake", "cmd_image_bake"),
    ("image bake --prefix aegis --vars-file bake-vars.yml", "cmd_image_bake"),
    ("fleet replace --prefix aegis --node node2", "cmd_fleet_replace"),
    ("fleet down --prefix aegis", "cmd_fleet_down"),
    ("cleanup --prefix aegismol", "cmd_cleanup"),
    ("cleanup --all", "cmd_cleanup"),
    ("wheels", "cmd_wheels"),
    ("controller up --prefix aegismol", "cmd_controller_up"),
    ("vm up --prefix aegismol --name vm1", "cmd_vm_up"),
    ("vm down --prefix aegismol --name vm1", "cmd_vm_down"),
    ("env", "cmd_env"),
    ("leftovers --prefix aegis", "cmd_leftovers"),
    ("--repo /work/x demo --nodes 2 --keep", "cmd_demo"),
])
def test_command_lines_called_from_outside_still_parse(argv: str, command: str) -> None:
    assert build_parser().parse_args(argv.split()).func.__name__ == command


@pytest.mark.parametrize("argv", ["fleet up --prefix Bad!", "fleet replace --prefix aegis",
                                  "fleet up --prefix aegis --caps privileged",
                                  "fleet up --prefix aegis --baked --unbaked",
                                  "image bake --prefix Bad!",
                                  "fleet sideways --prefix aegis"])
def test_bad_command_lines_are_refused_by_the_parser(argv: str) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(argv.split())
    assert exit_.value.code == 2


@pytest.mark.parametrize(("argv", "baked"), [("", None), ("--baked", True),
                                             ("--unbaked", False)])
def test_fleet_up_keeps_the_fleets_image_unless_told(argv: str, baked: bool | None) -> None:
    args = build_parser().parse_args(f"fleet up --prefix aegis --size 1 {argv}".split())
    assert args.baked is baked
