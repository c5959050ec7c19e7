"""The harden benchmark's figures: the Lynis gain is counted from a bare Debian node when
one was audited, and the gain over the node image is printed beside it."""

from __future__ import annotations

import pytest

from aegis_lab.paths import Paths
from benchmarks.harden import harden_figures, role_packages

pytestmark = pytest.mark.unit


def _report(index: int, warnings: list[str] | None = None) -> dict:
    return {"lynis": {"hardening_index": str(index), "warnings": warnings or [],
                      "suggestions": [], "waived": [{"id": "PKGS-7420"}]}}


def test_gain_from_the_bare_node_and_over_the_image():
    figures, targets, notes = harden_figures(
        {"node1": _report(68)}, {"node1": _report(86)}, 20.0, 5.0, 0, bare=_report(59))
    assert figures["lynis_bare_debian"] == 59
    assert figures["lynis_gain_node1"] == 27 and targets["lynis_gain_node1"] == ">= 26"
    assert figures["lynis_gain_over_image_node1"] == 18
    assert figures["converge_ratio"] == 0.25
    assert notes["waived_node1"] == "PKGS-7420"


def test_without_a_bare_node_the_gain_is_over_the_image():
    after = {"n": _report(70, ["SSH-7408|x|Port|-"])}
    figures, _, notes = harden_figures({"n": _report(60)}, after, 10.0, 2.0)
    assert figures["lynis_gain_n"] == 10 and "lynis_bare_debian" not in figures
    assert figures["warnings_unwaived_n"] == 1 and notes["warnings_left_n"] == "SSH-7408(Port)"


def test_the_bare_image_leaves_out_exactly_the_role_s_packages():
    packages = role_packages(Paths.discover())
    assert {"aide", "fail2ban", "debsums", "libpam-tmpdir"} <= set(packages)
    assert "openssh-server" not in packages and "python3" not in packages
