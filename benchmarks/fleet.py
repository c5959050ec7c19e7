"""Fleet lifecycle figures: create, first Ansible contact, replace, destroy (seconds).

Each round is printed as it finishes, then the medians through ``benchmarks.figures``,
so changes to the node backend or the Terraform modules show up as numbers, not as
flaky timed assertions in the tests. ``python -m benchmarks.fleet [--nodes N]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

from aegis_lab.cleanup import down
from aegis_lab.fleet import LocalFleet
from aegis_lab.naming import check_prefix, check_size
from aegis_lab.paths import Paths
from aegis_lab.playbook import ansible_results
from benchmarks.figures import report

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


def run(paths: Paths, nodes: object = 3, rounds: object = 3, prefix: str = "aegisbn") -> int:
    size = check_size(nodes)
    count = check_size(rounds)
    rows: list[dict[str, float]] = []
    print(f"fleet lifecycle, {size} nodes, {count} rounds (seconds)", flush=True)
    print("round " + " ".join(f"{s:>22}" for s in STEPS), flush=True)
    for n in range(1, count + 1):
        fleet = LocalFleet(prefix, paths)
        row: dict[str, float] = {}
        try:
            row["create"] = _timed(lambda f=fleet: f.up(size=size))
            row["first_contact"] = _timed(lambda f=fleet: _reach(f, "aegis_fleet", size))
            row["replace"] = _timed(lambda f=fleet: f.replace("node1"))
            row["contact_after_replace"] = _timed(lambda f=fleet: _reach(f, "node1", 1))
        finally:
            row["destroy"] = _timed(lambda f=fleet: down(f))
        rows.append(row)
        print(f"{n:>5} " + " ".join(f"{row[s]:>22.2f}" for s in STEPS), flush=True)
    medians = {f"{s}_s": round(statistics.median(r[s] for r in rows), 2) for s in STEPS}
    report("fleet", medians, title=f"median of {count} rounds, {size} nodes (seconds)",
           notes={"nodes": size, "rounds": count})
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fleet", description=__doc__)
    p.add_argument("--nodes", default=3, help="fleet size (default 3)")
    p.add_argument("--rounds", default=3, help="how many times to run the cycle (default 3)")
    p.add_argument("--prefix", type=check_prefix, default="aegisbn")
    args, _ = p.parse_known_args(argv)
    return run(Paths.discover(), nodes=args.nodes, rounds=args.rounds, prefix=args.prefix)


if __name__ == "__main__":
    sys.exit(main())
