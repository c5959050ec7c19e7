"""``python -m aegis_agent.bpf``: drive a pinned segment filter from the shell.

    python -m aegis_agent.bpf --pin-dir /sys/fs/bpf/aegis/segment --iface eth0 attach
    python -m aegis_agent.bpf --pin-dir ... grant '10.0.0.0/24 -> 192.0.2.2 tcp/22' --ttl 60
    python -m aegis_agent.bpf --pin-dir ... quarantine on --management '192.0.2.10 tcp/22'
    python -m aegis_agent.bpf --pin-dir ... status | counters | edges | detach

Every command prints one JSON document. Attach runs in the interface's network
namespace (``nsenter --net=/run/netns/NAME``; not ``ip netns exec``, whose private
/sys hides the host's bpffs); map commands work from any namespace.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import asdict

from .edges import EdgeSpecError
from .segment import PIN_ROOT, SegmentFilter
from .syscall import BpfError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m aegis_agent.bpf", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pin-dir", default=str(PIN_ROOT / "segment"))
    p.add_argument("--iface")
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("attach")
    a.add_argument("--xdp-mode", default="native", choices=["native", "generic", "auto"])
    a.add_argument("--tc-mode", default="tcx", choices=["tcx", "clsact", "auto"])
    a.add_argument("--mode", default="enforce", choices=["enforce", "observe"])
    a.add_argument("--arp", default="allow", choices=["allow", "deny"])
    a.add_argument("--ipv6", default="deny", choices=["allow", "deny", "filter"])
    sub.add_parser("detach")
    sub.add_parser("status")
    sub.add_parser("counters")
    sub.add_parser("edges")
    g = sub.add_parser("grant")
    g.add_argument("edge")
    g.add_argument("--ttl", type=float)
    g.add_argument("--idle", type=float)
    r = sub.add_parser("revoke")
    r.add_argument("edge")
    q = sub.add_parser("quarantine")
    q.add_argument("state", choices=["on", "off"])
    q.add_argument("--management", action="append")
    m = sub.add_parser("mode")
    m.add_argument("mode", choices=["enforce", "observe"])
    return p


def _edges(seg: SegmentFilter) -> dict:
    return {"edges": [{"edge": str(s.edge), "state": s.state(), "expires_ns": s.expires_ns,
                       "idle_ns": s.idle_ns, "last_seen_ns": s.last_seen_ns}
                      for s in seg.edges()]}


def _detach(seg: SegmentFilter) -> dict:
    seg.detach()
    return {"detached": str(seg.pin_dir)}


def _quarantine(seg: SegmentFilter, args: argparse.Namespace) -> dict:
    seg.quarantine(args.state == "on", args.management)
    return seg.policy()


def _mode(seg: SegmentFilter, args: argparse.Namespace) -> dict:
    seg.set_mode(args.mode)
    return seg.policy()


COMMANDS: dict[str, Callable[[SegmentFilter, argparse.Namespace], dict]] = {
    "attach": lambda seg, _: asdict(seg.attach()),
    "detach": lambda seg, _: _detach(seg),
    "grant": lambda seg, a: {"granted": str(seg.grant(a.edge, ttl=a.ttl, idle=a.idle))},
    "revoke": lambda seg, a: {"revoked": seg.revoke(a.edge)},
    "quarantine": _quarantine,
    "mode": _mode,
    "counters": lambda seg, _: seg.counters(),
    "edges": lambda seg, _: _edges(seg),
    "status": lambda seg, _: seg.status(),
}


def run(argv: list[str] | None = None) -> dict:
    args = _parser().parse_args(argv)
    kw = {}
    if args.cmd == "attach":
        kw = {"xdp_mode": args.xdp_mode, "tc_mode": args.tc_mode, "mode": args.mode,
              "arp": args.arp, "ipv6": args.ipv6}
    seg = SegmentFilter(args.iface, args.pin_dir, **kw)
    try:
        return COMMANDS[args.cmd](seg, args)
    finally:
        seg.close()


def main(argv: list[str] | None = None) -> int:
    try:
        out = run(argv)
    except (BpfError, EdgeSpecError, ValueError) as e:
        print(json.dumps({"error": str(e)}), file=sys.stderr)
        return 1
    print(json.dumps(out, default=str))
    return 0
