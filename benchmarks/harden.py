"""Hardening figures: converge time (first and second run, and their ratio), Lynis hardening
index before and after with the gain, the Lynis findings left (waived or not, see
roles/harden/files/lynis_waivers.yml) per node, and the systemd exposure of the hardened
units, on a fresh local fleet.

The plays run through ansible-runner and print one line per task result as they run;
the figures come from the audit reports. ``python -m benchmarks.harden [--nodes N]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

from aegis_controller.playbook import Progress
from aegis_lab.cleanup import down
from aegis_lab.fleet import LocalFleet
from aegis_lab.naming import check_prefix, check_size
from aegis_lab.paths import Paths
from aegis_lab.playbook import Target, ansible_playbook
from benchmarks.figures import report


def audit(fleet: Target, report_dir: Path, timeout: float = 1800) -> dict[str, dict]:
    """The audit playbook (role dry run + Lynis) on ``fleet`` (a lab fleet or a VM node);
    node → report."""
    report_dir.mkdir(parents=True, exist_ok=True)
    ansible_playbook(fleet, fleet.paths.playbooks / "audit.yml",
                     extravars={"aegis_audit_report_dir": str(report_dir)},
                     on_event=Progress("audit"), check=True, timeout=timeout)
    return {p.stem: json.loads(p.read_text()) for p in sorted(report_dir.glob("*.json"))}


def _converge(fleet: LocalFleet) -> tuple[float, int]:
    """Seconds the converge took, and how many tasks it changed (all nodes)."""
    started = time.monotonic()
    run = ansible_playbook(fleet, fleet.paths.playbooks / "harden.yml",
                           on_event=Progress("harden"), check=True)
    return round(time.monotonic() - started, 1), run.changed


def _ids(entries: list[str]) -> str:
    """``SSH-7408(Port), TIME-3104`` from Lynis report entries (``ID|text|detail|...``)."""
    out = []
    for entry in entries:
        parts = entry.split("|")
        detail = parts[2] if len(parts) > 2 and parts[2] not in ("", "-") else ""
        several = detail and parts[0] == "SSH-7408"  # one id, one finding per setting
        out.append(f"{parts[0]}({detail.split(' ')[0]})" if several else parts[0])
    return ", ".join(dict.fromkeys(out)) or "-"


def _index(report: dict) -> int:
    return int(report["lynis"]["hardening_index"] or 0)


def lynis_figures(before: dict[str, dict], after: dict[str, dict], bare: dict | None = None,
                  ) -> tuple[dict[str, float], dict[str, str], dict[str, str]]:
    """Lynis figures, targets and notes per node from the audit reports (node → report)
    before and after converge.

    ``bare`` is the report of a bare Debian node (the node image without the packages the
    role needs): the gain is counted from it, as for a role that installs its packages
    (the node image carries them only because lab nodes have no mirror); the gain over the
    node image as booted is printed beside it."""
    figures: dict[str, float] = {}
    targets: dict[str, str] = {}
    notes: dict[str, str] = {}
    if bare is not None:
        figures["lynis_bare_debian"] = _index(bare)
    for node in sorted(after):
        la = after[node]["lynis"]
        index_before, index_after = _index(before[node]), _index(after[node])
        figures[f"lynis_before_{node}"] = index_before
        figures[f"lynis_after_{node}"] = index_after
        if bare is not None:
            figures[f"lynis_gain_{node}"] = index_after - _index(bare)
            figures[f"lynis_gain_over_image_{node}"] = index_after - index_before
        else:
            figures[f"lynis_gain_{node}"] = index_after - index_before
        targets[f"lynis_gain_{node}"] = ">= 26"
        figures[f"warnings_unwaived_{node}"] = len(la.get("warnings_unwaived", la["warnings"]))
        targets[f"warnings_unwaived_{node}"] = "== 0"
        notes[f"warnings_left_{node}"] = _ids(la.get("warnings_unwaived", la["warnings"]))
        notes[f"suggestions_left_{node}"] = _ids(la.get("suggestions_unwaived", la["suggestions"]))
        waived = dict.fromkeys(w["id"] for w in la.get("waived", []))
        notes[f"waived_{node}"] = ", ".join(waived) or "-"
    return figures, targets, notes


def harden_figures(before: dict[str, dict], after: dict[str, dict], first: float,
                   second: float, second_changed: int = 0, bare: dict | None = None,
                   ) -> tuple[dict[str, float], dict[str, str], dict[str, str]]:
    """Figures, targets and notes of the harden bench: the two converge times, their ratio
    and the tasks the second changed, then :func:`lynis_figures`."""
    figures: dict[str, float] = {"converge_first_s": first, "converge_second_s": second,
                                 "converge_ratio": round(second / first, 2) if first else 0.0,
                                 "second_converge_changed": second_changed}
    targets = {"converge_first_s": "<= 60", "converge_second_s": "<= 20",
               "converge_ratio": "<= 0.3", "second_converge_changed": "== 0"}
    lynis, lynis_targets, notes = lynis_figures(before, after, bare)
    return {**figures, **lynis}, {**targets, **lynis_targets}, notes


def role_packages(paths: Paths) -> list[str]:
    """The packages aegis.fleet.harden needs from the node image (its features' packages)."""
    role_vars = yaml.safe_load((paths.repo_root / "roles/harden/vars/main.yml").read_text())
    return sorted(role_vars["__harden_image_package_features"])


def _bareaudit(paths: Paths, prefix: str, work: Path) -> dict:
    """The audit report of one node booted from the node image without the role's
    packages: a bare Debian node."""
    fleet = LocalFleet(prefix, paths)
    packages = role_packages(paths)
    try:
        print(f"bare Debian node (the node image without {', '.join(packages)}; "
              "its image is built the first time, about two minutes)", flush=True)
        fleet.up(size=1, caps="admin", without=packages)
        return next(iter(audit(fleet, work).values()))
    finally:
        down(fleet)


def run(paths: Paths, nodes: object = 3, prefix: str = "aegishb") -> int:
    """Lynis index and systemd exposure before/after, converge time first and second run."""
    size = check_size(nodes)
    bare = _bareaudit(paths, check_prefix(prefix[:7] + "b"),
                       paths.state_root / "bench-harden-bare")
    fleet = LocalFleet(prefix, paths)
    try:
        fleet.up(size=size, caps="admin")  # the harden role mounts and uses a scratch netns
        work = fleet.dir / "bench"
        before = audit(fleet, work / "before")
        first, _ = _converge(fleet)
        second, second_changed = _converge(fleet)
        after = audit(fleet, work / "after")
    finally:
        down(fleet)
    figures, targets, notes = harden_figures(before, after, first, second, second_changed,
                                             bare)
    node = sorted(after)[0]
    eb = before[node]["posture"].get("unit_exposure", {})
    ea = after[node]["posture"].get("unit_exposure", {})
    for unit in sorted(ea):
        figures[f"exposure_before_{unit}"] = eb.get(unit, "?")
        figures[f"exposure_after_{unit}"] = ea.get(unit)
    report("harden", figures, title=f"hardening {size} nodes (exposure of {node}'s units)",
           targets=targets, notes={"nodes": size, **notes})
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.harden", description=__doc__)
    p.add_argument("--nodes", default=3, help="fleet size (default 3)")
    p.add_argument("--prefix", type=check_prefix, default="aegishb")
    args, _ = p.parse_known_args(argv)
    return run(Paths.discover(), nodes=args.nodes, prefix=args.prefix)


if __name__ == "__main__":
    sys.exit(main())
