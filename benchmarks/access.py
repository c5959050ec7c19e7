"""``python -m benchmarks.access``: how fast a granted user's first packet passes, and how
close to its idle timeout an unused grant is revoked.

Runs the just-in-time access path with real pieces on this machine
(``tests/harness_access.py``): an OpenBao dev server as the identity provider, the
controller in namespace a trusting its tokens, the real agent daemon with the XDP filter
on namespace b's veth (rounds ``--interval`` seconds apart: orders reach it through its
long poll), a TCP service on the node. Then:

- ``--grants`` times: user dana's request (``POST /v1/access``, from namespace a) is
  answered ``granted``; from that answer, namespace a tries a TCP connection to the
  service every few milliseconds until one is accepted: **request accepted → first packet
  passes**. The grant is revoked and the next round waits until the service is dropped
  again.
- ``--idle-samples`` times: a grant, one connection, then silence: the time from that
  last packet until the controller records the idle revoke (the agent drops an edge idle
  for 60 s at its next sweep, every ``segment.sweep_interval`` = 5 s, and reports it).
- ``--fleet N`` (off by default: it brings up a lab fleet, about 3 minutes) adds the
  round of ``benchmarks/segment_rollout.py``: a label policy change → acknowledged by every
  node's agent, and → seen in traffic on every node of a lab fleet of N nodes.

Figures are printed, not asserted. Needs root.
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import sys
import time
from pathlib import Path

from .figures import percentile, report
from .segment_rollout import rollout
from .teardown import exit_on_sigterm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "integration"))

from harness_access import CACHE_PORT, PORT, Fleet, access_fleet

from aegis_protocol import routes
from harness import openbao_dev, wait_until

IDLE = 60.0


def _first_accept(dst: str, deadline: float) -> float | None:
    """In namespace a: monotonic time of the first accepted TCP connection to the
    service (a new SYN every 3 ms), or None by ``deadline``."""
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.003)
            try:
                s.connect((dst, PORT))
                return time.monotonic()
            except OSError:
                continue
    return None


def _grant(fleet: Fleet, reason: str, ttl: str = "10m", service: str = "db") -> dict:
    r = fleet.as_user("dana", "POST", routes.ACCESS,
                      {"service": service, "ttl": ttl, "reason": reason})
    if r.status_code != 201 or r.json()["status"] != "granted":
        raise SystemExit(f"request not granted: {r.status_code} {r.text}")
    return r.json()


def _revoke(fleet: Fleet, request_id: str) -> None:
    r = fleet.as_user("dana", "POST", routes.access_one(request_id, "revoke"),
                      {"reason": "bench round done"})
    if r.status_code != 200:
        raise SystemExit(f"revoke refused: {r.status_code} {r.text}")
    if not wait_until(lambda: not fleet.daemon.lab.reachable(PORT), 30):
        raise SystemExit("the service still accepts connections 30 s after the revoke")


def _first_packet_ms(fleet: Fleet, n: int) -> float:
    lab = fleet.daemon.lab
    granted = _grant(fleet, f"bench grant {n}")
    accepted = time.monotonic()  # the answer is in: the request is accepted
    passed = lab.in_a.submit(_first_accept, lab.pair.b_addr, accepted + 30).result()
    if passed is None:
        raise SystemExit(f"grant {n}: no connection passed within 30 s")
    _revoke(fleet, granted["request_id"])
    return (passed - accepted) * 1000


def _idle_revoke_s(fleet: Fleet, n: int) -> float:
    lab = fleet.daemon.lab
    # another service than the first-packet rounds': their connections, cut by revokes
    # mid-close, go on sending (retransmitted FINs and the user's answers) for a while,
    # and on the same edge those are traffic that rightly keeps it from going idle
    granted = _grant(fleet, f"bench idle {n}", ttl="30m", service="cache")
    if not wait_until(lambda: lab.reachable(CACHE_PORT), 30):
        raise SystemExit(f"idle sample {n}: the grant never opened the service")
    last_packet = time.monotonic()  # reachable() just connected and closed
    rid = granted["request_id"]
    if not wait_until(lambda: fleet.as_user("dana", "GET", routes.access_one(rid)).json()
                      ["status"] == "revoked", IDLE + 60, 0.25):
        raise SystemExit(f"idle sample {n}: not revoked {IDLE + 60:.0f} s after the last packet")
    return time.monotonic() - last_packet


def run(grants: int, idle_samples: int, interval: float) -> tuple[dict[str, float],
                                                                  dict[str, object]]:
    prefix = f"ab{secrets.token_hex(3)}"
    with openbao_dev(prefix + "v") as bao, access_fleet(bao, prefix, interval) as fleet:
        print(f"[bench] OpenBao, controller, agent up; {grants} grants", flush=True)
        first = []
        for n in range(1, grants + 1):
            first.append(_first_packet_ms(fleet, n))
            if n % 10 == 0 or n == grants:
                print(f"[bench] grant {n}/{grants}: first packet {first[-1]:.1f} ms",
                      flush=True)
        idle = []
        for n in range(1, idle_samples + 1):
            print(f"[bench] idle sample {n}/{idle_samples} (about {IDLE + 5:.0f} s)",
                  flush=True)
            idle.append(_idle_revoke_s(fleet, n))
    figures: dict[str, float] = {
        "grant_to_first_packet_p50_ms": round(percentile(first, 0.5), 1),
        "grant_to_first_packet_p99_ms": round(percentile(first, 0.99), 1),
        "grant_to_first_packet_max_ms": round(max(first), 1)}
    if idle:
        figures["idle_revoke_after_last_packet_p50_s"] = round(percentile(idle, 0.5), 1)
        figures["idle_revoke_late_max_s"] = round(max(idle) - IDLE, 1)
    return figures, {"grants": grants, "idle_samples": idle_samples,
                     "agent_round_interval_s": interval, "idle_timeout_s": IDLE,
                     "probe": "a new TCP connection every 3 ms from the user's namespace",
                     "load_average": " ".join(f"{x:.2f}" for x in os.getloadavg())}


def main(argv: list[str] | None = None) -> int:
    exit_on_sigterm()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--grants", type=int, default=50, help="grants timed (default 50)")
    p.add_argument("--idle-samples", type=int, default=1,
                   help="idle revokes timed, about 65 s each (default 1; 0: none)")
    p.add_argument("--interval", type=float, default=10.0,
                   help="the agent's round interval in seconds (default 10, the agent's "
                        "default: orders come through the long poll)")
    p.add_argument("--fleet", type=int, default=0, metavar="N",
                   help="also time a label policy change on a lab fleet of N nodes "
                        "(2 to 8; default 0: not run, it takes minutes)")
    p.add_argument("--fleet-rounds", type=int, default=5,
                   help="policy changes timed on the fleet (default 5)")
    args = p.parse_args(argv)
    if args.grants < 1 or args.idle_samples < 0 or args.interval <= 0:
        p.error("--grants must be >= 1, --idle-samples >= 0 and --interval > 0")
    if args.fleet and not (2 <= args.fleet <= 8 and args.fleet_rounds >= 1):
        p.error("--fleet must be 0 (off) or 2 to 8 nodes, --fleet-rounds >= 1")
    figures, notes = run(args.grants, args.idle_samples, args.interval)
    if args.fleet:
        more, more_notes = rollout(args.fleet, args.fleet_rounds,
                                   lambda m: print(f"[bench] {m}", flush=True))
        figures, notes = {**figures, **more}, {**notes, **more_notes}
    else:
        notes["policy_change_to_enforced"] = "not run (--fleet N: a lab fleet of N nodes)"
    report("access", figures,
           title="just-in-time access: request accepted → first packet passes; last packet "
                 "→ idle revoke recorded" + ("; label policy change → acked and enforced "
                                             "on every fleet node:" if args.fleet else ":"),
           targets={"grant_to_first_packet_p50_ms": "<= 25",
                    "grant_to_first_packet_p99_ms": "<= 25",
                    "idle_revoke_late_max_s": "<= 5 (the agent's sweep interval)"},
           notes=notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
