"""``python -m benchmarks.recovery`` (``./aegis bench recovery``): how fast a compromised
node is contained, and how long until its replacement is attested trusted — for one node,
and for three nodes at once under the default guard rails and with ``max_in_flight=3``.

One fleet of ``--nodes`` (default 4) is built the demo's way (``aegis_lab.demo.Story``:
Terraform, harden, OpenBao, the controller with its secrets gate and recovery engine,
agents trusted and holding leased secrets). Then, each round, the demo's compromise on the
round's victims (an unknown binary run from root's cache; the agent kills it and cuts the
node off), and the engine's recovery until every victim is trusted again:

1. ``one``: node2, default guard rails;
2. ``three-default``: three other nodes at once, default guard rails — the breaker trips
   and the held jobs wait for an operator, whom the benchmark plays (it approves each
   held job as soon as it is held, and counts the approvals);
3. ``three-parallel``: three nodes at once after a controller restart with
   ``max_in_flight: 3`` (and the fraction, breaker, hourly budget and cool-down opened,
   since this round replaces nodes replaced minutes earlier on purpose).

Figures: detect → contained in ms (the kernel's exec time to the agent's quarantine
decision, from the events), p50/p99 over every victim of every round; contained →
replacement trusted in s per round (each victim's, and the round's last). ``--baked``
boots the fleet from the baked golden image (``aegis-lab image bake``) when the lab has
it. Printed, not asserted; read them as orders of magnitude on a shared 2-core machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time

from aegis_lab import cleanup
from aegis_lab import controller as lab_controller
from aegis_lab.demo import DemoFailed, Story, sigterm_unwinds
from aegis_lab.paths import Paths
from aegis_lab.timeline import Timeline

from .figures import percentile, report

PARALLEL = {"max_in_flight": 3, "max_unavailable_fraction": 0.9, "breaker_threshold": 10,
            "max_per_hour": 60, "max_attempts_per_node": 10, "cooldown_s": 0}


def _round(story: Story, name: str, victims: list[str]) -> dict:
    """Compromise ``victims`` one right after the other, then wait until each one's
    recovery job is trusted (approving held jobs); returns the round's figures."""
    t = story.t
    contained: dict[str, dict] = {}
    befores = {}
    for victim in victims:  # every victim first, within a second or two
        story.victim = victim
        befores[victim] = story.compromise()
    for victim in victims:
        story.victim = victim
        figures = story.contained(befores[victim])
        if "quarantine_ms" not in figures:
            raise DemoFailed(f"{victim}: no quarantine decision recorded")
        contained[victim] = figures
    approvals = 0
    trusted_at: dict[str, float] = {}
    start = time.monotonic()
    with t.step(f"{name}: recovery of {', '.join(victims)}") as step:
        while len(trusted_at) < len(victims) and time.monotonic() - start < 3600:
            for victim in victims:
                if victim in trusted_at:
                    continue
                jobs = story.controller_json_lines("recovery", "list", "--node", victim)
                job = jobs[-1] if jobs else None
                if job is None:
                    continue
                if job["state"] == "trusted" and job["flagged_at"] * 1e9 >= \
                        contained[victim]["contained_ns"] - 5e9:
                    trusted_at[victim] = time.time()
                    t.progress(f"{victim} trusted again")
                elif job["state"] == "awaiting-approval":
                    t.progress(f"{victim} held: {job['reason'][:120]}")
                    story.controller_json("recovery", "approve", job["job_id"])
                    approvals += 1
                elif job["state"] == "failed":
                    _keep_evidence(story, victim)
                    raise DemoFailed(f"{victim}'s recovery failed: {job.get('error')}")
            time.sleep(2)
        if len(trusted_at) < len(victims):
            raise DemoFailed(f"{name}: not every victim was trusted again within an hour")
        step.detail = f"{approvals} approvals"
    took = {v: trusted_at[v] - contained[v]["contained_ns"] / 1e9 for v in victims}
    return {"victims": victims, "detect_ms": [contained[v]["quarantine_ms"] for v in victims],
            "kill_ms": [contained[v].get("deny_ms") for v in victims],
            "contained_to_trusted_s": took, "approvals": approvals}


def _keep_evidence(story: Story, victim: str) -> None:
    """What the failed victim's agent said, into the report (the fleet goes away after)."""
    unit = story.on(victim, "systemctl", "status", "--no-pager", "aegis-agent")
    journal = story.on(victim, "journalctl", "-u", "aegis-agent", "--no-pager", "-o", "cat",
                       "-n", "80")
    story.t.facts[f"failed_{victim}"] = {"status": unit.stdout.splitlines()[:12],
                                         "journal": journal.stdout.splitlines()}
    for line in unit.stdout.splitlines()[:6]:
        story.t.progress(f"{victim}: {line}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.recovery", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=4, help="fleet size (4: three victims "
                    "at once and never the last node of the role)")
    ap.add_argument("--prefix", default="bnrec")
    ap.add_argument("--baked", action="store_true", help="boot the baked golden image "
                    "(verify = the roles in check mode) instead of converging a plain one")
    ap.add_argument("--rounds", default="one,three-default,three-parallel",
                    help="which rounds, comma-separated")
    args = ap.parse_args(argv)
    if args.nodes < 4:
        ap.error("--nodes must be at least 4 (three victims and one node left)")
    paths = Paths.discover()
    report_path = paths.state_root / "bench" / f"recovery-{args.prefix}.json"
    t = Timeline(f"bench recovery, fleet '{args.prefix}', {args.nodes} nodes")
    story = Story(paths, args.prefix, args.nodes, t, baked=args.baked)
    rounds: dict[str, dict] = {}
    wanted = args.rounds.split(",")
    rc = 1
    try:
        with sigterm_unwinds(), contextlib.ExitStack() as stack:
            story.provision()
            story.harden()
            story.openbao(stack)
            story.controller_up()
            story.agents()
            nodes = story.nodes
            if "one" in wanted:
                rounds["one"] = _round(story, "one", [nodes[1]])
            others = [n for n in nodes if n != nodes[1]][:3]
            if "three-default" in wanted:
                rounds["three-default"] = _round(story, "three-default", others)
            if "three-parallel" in wanted:
                story.restart_controller(PARALLEL)
                rounds["three-parallel"] = _round(story, "three-parallel", nodes[1:4])
            rc = 0
    except DemoFailed as err:
        t.say(f"the benchmark failed: {err}")
    finally:
        lab_controller.down(story.fleet)
        cleanup.down(story.fleet)
        t.facts["rounds"] = rounds
        t.write(report_path)
    if not rounds:
        return 1
    detect = [ms for r in rounds.values() for ms in r["detect_ms"]]
    kill = [ms for r in rounds.values() for ms in r["kill_ms"] if ms is not None]
    figures: dict[str, float] = {
        "detect_to_contained_ms_p50": round(statistics.median(detect), 2),
        "detect_to_contained_ms_p99": round(percentile(detect, 0.99), 2),
        "exec_to_killed_ms_p50": round(statistics.median(kill), 2) if kill else -1,
    }
    for name, r in rounds.items():
        took = list(r["contained_to_trusted_s"].values())
        key = name.replace("-", "_")
        figures[f"{key}_contained_to_trusted_s_max"] = round(max(took), 1)
        figures[f"{key}_contained_to_trusted_s_mean"] = round(statistics.mean(took), 1)
        figures[f"{key}_approvals"] = r["approvals"]
    report("recovery", figures,
           title="recovery: detect → contained (ms), contained → replacement trusted (s):",
           targets={"detect_to_contained_ms_p99": "milliseconds (the mission)",
                    "one_contained_to_trusted_s_max": "seconds to minutes"},
           notes={"samples": len(detect), "nodes": args.nodes,
                  "image": "baked" if args.baked else "un-baked",
                  "report": str(report_path),
                  "per_node": json.dumps({n: r["contained_to_trusted_s"]
                                          for n, r in rounds.items()}, default=str)})
    return rc


if __name__ == "__main__":
    sys.exit(main())

