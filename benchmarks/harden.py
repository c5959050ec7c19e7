"""Hardening figures: converge time (first and second run), Lynis hardening index and
systemd exposure of the hardened units, before and after, on a fresh local fleet.

The plays run through ansible-runner and print one line per task result as they run;
the figures come from the audit reports. ``python -m benchmarks.harden [--nodes N]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from aegis_controller.playbook import Progress
from aegis_lab.cleanup import down
from aegis_lab.fleet import LocalFleet
from aegis_lab.naming import check_prefix, check_size
from aegis_lab.paths import Paths
from aegis_lab.playbook import ansible_playbook
from benchmarks.figures import report


def _audit(fleet: LocalFleet, report_dir: Path) -> dict[str, dict]:
    report_dir.mkdir(parents=True, exist_ok=True)
    ansible_playbook(fleet, fleet.paths.playbooks / "audit.yml",
                     extravars={"aegis_audit_report_dir": str(report_dir)},
                     on_event=Progress("audit"), check=True)
    return {p.stem: json.loads(p.read_text()) for p in sorted(report_dir.glob("*.json"))}


def _converge(fleet: LocalFleet) -> float:
    started = time.monotonic()
    ansible_playbook(fleet, fleet.paths.playbooks / "harden.yml", on_event=Progress("harden"),
                     check=True)
    return round(time.monotonic() - started, 1)


def run(paths: Paths, nodes: object = 3, prefix: str = "aegishb") -> int:
    """Lynis index and systemd exposure before/after, converge time first and second run."""
    size = check_size(nodes)
    fleet = LocalFleet(prefix, paths)
    try:
        fleet.up(size=size, caps="admin")  # the harden role mounts and uses a scratch netns
        work = fleet.dir / "bench"
        before = _audit(fleet, work / "before")
        first = _converge(fleet)
        second = _converge(fleet)
        after = _audit(fleet, work / "after")
    finally:
        down(fleet)
    figures: dict[str, float] = {"converge_first_s": first, "converge_second_s": second}
    warnings: dict[str, str] = {}
    for node in sorted(after):
        figures[f"lynis_before_{node}"] = before[node]["lynis"]["hardening_index"]
        figures[f"lynis_after_{node}"] = after[node]["lynis"]["hardening_index"]
        warnings[f"warnings_left_{node}"] = "; ".join(after[node]["lynis"]["warnings"]) or "-"
    node = sorted(after)[0]
    eb = before[node]["posture"].get("unit_exposure", {})
    ea = after[node]["posture"].get("unit_exposure", {})
    for unit in sorted(ea):
        figures[f"exposure_before_{unit}"] = eb.get(unit, "?")
        figures[f"exposure_after_{unit}"] = ea.get(unit)
    report("harden", figures, title=f"hardening {size} nodes (exposure of {node}'s units)",
           notes={"nodes": size, **warnings})
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.harden", description=__doc__)
    p.add_argument("--nodes", default=3, help="fleet size (default 3)")
    p.add_argument("--prefix", type=check_prefix, default="aegishb")
    args, _ = p.parse_known_args(argv)
    return run(Paths.discover(), nodes=args.nodes, prefix=args.prefix)


if __name__ == "__main__":
    sys.exit(main())
