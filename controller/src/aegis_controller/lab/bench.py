"""Fleet lifecycle figures: create, first Ansible contact, replace, destroy.

Printed as a table per round plus the median, so changes to the node backend or the
Terraform modules show up as numbers, not as flaky timed assertions in the tests.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from .fleet import REPO_ROOT, LocalFleet
from .naming import check_size
from .playbook import ansible_playbook, ansible_results

STEPS = ("create", "first_contact", "replace", "contact_after_replace", "destroy")


def _timed(fn: Callable[[], object]) -> float:
    started = time.monotonic()
    fn()
    return round(time.monotonic() - started, 2)


def _reach(fleet: LocalFleet, pattern: str, expected: int) -> None:
    results = ansible_results(fleet, pattern, "ansible.builtin.ping")
    pongs = [n for n, r in results.items() if r.get("ping") == "pong"]
    if len(pongs) != expected:
        raise RuntimeError(f"only {sorted(pongs)} answered ansible ping: {results}")


def run_bench(nodes: object = 3, rounds: object = 3, prefix: str = "aegisbn") -> int:
    size = check_size(nodes)
    count = check_size(rounds)
    rows: list[dict[str, float]] = []
    print(f"fleet lifecycle, {size} nodes, {count} rounds (seconds)", flush=True)
    print("round " + " ".join(f"{s:>22}" for s in STEPS), flush=True)
    for n in range(1, count + 1):
        fleet = LocalFleet(prefix)
        row: dict[str, float] = {}
        try:
            row["create"] = _timed(lambda f=fleet: f.up(size=size))
            row["first_contact"] = _timed(lambda f=fleet: _reach(f, "aegis_fleet", size))
            row["replace"] = _timed(lambda f=fleet: f.replace("node1"))
            row["contact_after_replace"] = _timed(lambda f=fleet: _reach(f, "node1", 1))
        finally:
            row["destroy"] = _timed(fleet.down)
        rows.append(row)
        print(f"{n:>5} " + " ".join(f"{row[s]:>22.2f}" for s in STEPS), flush=True)
    medians = {s: round(statistics.median(r[s] for r in rows), 2) for s in STEPS}
    print("  med " + " ".join(f"{medians[s]:>22.2f}" for s in STEPS))
    print(json.dumps({"benchmark": "fleet_lifecycle", "nodes": size, "rounds": count,
                      "median_seconds": medians}))
    return 0


def _audit(fleet: LocalFleet, report_dir: Path) -> dict[str, dict]:
    report_dir.mkdir(parents=True, exist_ok=True)
    proc = ansible_playbook(fleet, REPO_ROOT / "playbooks" / "audit.yml",
                            "-e", f"aegis_audit_report_dir={report_dir}")
    if proc.returncode != 0:
        raise RuntimeError(f"audit failed: {proc.stdout[-3000:]} {proc.stderr[-2000:]}")
    return {p.stem: json.loads(p.read_text()) for p in sorted(report_dir.glob("*.json"))}


def _converge(fleet: LocalFleet) -> float:
    started = time.monotonic()
    proc = ansible_playbook(fleet, REPO_ROOT / "playbooks" / "harden.yml")
    if proc.returncode != 0:
        raise RuntimeError(f"converge failed: {proc.stdout[-3000:]}")
    return round(time.monotonic() - started, 1)


def run_harden_bench(nodes: object = 3, prefix: str = "aegishb") -> int:
    """Lynis index and systemd exposure before/after, converge time first and second run."""
    size = check_size(nodes)
    fleet = LocalFleet(prefix)
    try:
        fleet.up(size=size)
        work = fleet.dir / "bench"
        before = _audit(fleet, work / "before")
        first = _converge(fleet)
        second = _converge(fleet)
        after = _audit(fleet, work / "after")
    finally:
        fleet.down()
    print(f"converge {size} nodes: first run {first} s, second run {second} s")
    print(f"{'node':<8} {'lynis before':>13} {'lynis after':>12}  warnings left")
    for node in sorted(after):
        b, a = before[node]["lynis"], after[node]["lynis"]
        print(f"{node:<8} {b['hardening_index']:>13} {a['hardening_index']:>12}  "
              f"{len(a['warnings'])}: {'; '.join(a['warnings'])}")
    print(f"{'unit':<16} {'exposure before':>16} {'exposure after':>15}")
    node = sorted(after)[0]
    eb = before[node]["posture"].get("unit_exposure", {})
    ea = after[node]["posture"].get("unit_exposure", {})
    for unit in sorted(ea):
        print(f"{unit:<16} {eb.get(unit, '?')!s:>16} {ea.get(unit)!s:>15}")
    print(json.dumps({"benchmark": "harden", "nodes": size, "converge_first_s": first,
                      "converge_second_s": second,
                      "lynis_before": {n: before[n]["lynis"]["hardening_index"] for n in before},
                      "lynis_after": {n: after[n]["lynis"]["hardening_index"] for n in after},
                      "exposure_before": eb, "exposure_after": ea}))
    return 0
