"""Fleet lifecycle figures: create, first Ansible contact, replace, destroy.

Printed as a table per round plus the median, so changes to the node backend or the
Terraform modules show up as numbers, not as flaky timed assertions in the tests.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable

from .fleet import LocalFleet
from .naming import check_size
from .playbook import ansible_results

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
