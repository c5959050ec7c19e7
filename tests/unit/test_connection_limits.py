"""The controller's connection limits fit its systemd unit (issue 12 item 2): the unit's
LimitNOFILE leaves room above the connections the API keeps open, and the CLI's defaults
are the limits' defaults."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from aegis_controller.api.connections import ConnectionLimits
from aegis_controller.cli import build_parser

pytestmark = pytest.mark.unit

UNIT = Path(__file__).parents[2] / "controller/systemd/aegis-controller.service"


def test_the_unit_leaves_file_descriptors_above_the_connection_limit() -> None:
    found = re.search(r"^LimitNOFILE=(\d+)$", UNIT.read_text(), re.M)
    assert found, "aegis-controller.service needs a LimitNOFILE"
    args = build_parser().parse_args(["serve"])
    assert args.max_connections == ConnectionLimits().max_connections
    assert args.per_source == ConnectionLimits().per_source
    assert int(found[1]) >= args.max_connections + 1024


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="must be positive"):
        ConnectionLimits(read_timeout=0)
