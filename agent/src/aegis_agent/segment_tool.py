"""``aegis-agent segment``: the developer's commands on a pinned segment filter, no daemon.

    aegis-agent segment --pin-dir /sys/fs/bpf/aegis/segment --iface eth0 attach
    aegis-agent segment --pin-dir ... grant '10.0.0.0/24 -> 192.0.2.2 tcp/22' --ttl 60
    aegis-agent segment --pin-dir ... quarantine on --management '192.0.2.10 tcp/22'
    aegis-agent segment --pin-dir ... status | counters | edges | policies | fqdn | detach
    aegis-agent segment --pin-dir ... policy-mode web-db enforce   (one label policy)

(``python -m aegis_agent.bpf ARGS`` is ``aegis-agent segment ARGS``.) Every command
prints one JSON document; an error prints ``{"error": …}`` on stderr and exits 1. The
verbs (grant, revoke, quarantine) go through ``Enforcement`` with source ``cli`` and
answer what the control socket answers; with no daemon there is no spool, so their
events go to the log only. Attach runs in the interface's network namespace
(``nsenter --net=/run/netns/NAME``; not ``ip netns exec``, whose private /sys hides the
host's bpffs); map commands work from any namespace.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import asdict

from aegis_protocol.events import Event

from .bpf.bpffs import PIN_ROOT
from .bpf.edges import EdgeSpecError
from .bpf.segment import SegmentFilter
from .bpf.syscall import BpfError
from .enforcement import Enforcement

log = logging.getLogger("aegis.agent.segment")


def _log_events(events: list[Event]) -> None:
    for event in events:
        log.info("%s", event.data.get("what"), extra={"event": event.data})


SegmentCommand = Callable[[argparse.Namespace, SegmentFilter, Enforcement], object]


def _on_segment(fn: SegmentCommand) -> Callable[[argparse.Namespace], int]:
    """``fn`` as a sub-command: it gets the filter at ``--pin-dir`` and its enforcement;
    its answer (or the error) is printed as one JSON document."""

    @functools.wraps(fn)
    def command(args: argparse.Namespace) -> int:
        kw = {}
        if args.verb == "attach":
            kw = {"xdp_mode": args.xdp_mode, "tc_mode": args.tc_mode, "mode": args.mode,
                  "arp": args.arp, "ipv6": args.ipv6}
        try:
            seg = SegmentFilter(args.iface, args.pin_dir, **kw)
            try:
                out = fn(args, seg, Enforcement(seg, None, None, _log_events))
            finally:
                seg.close()
        except (BpfError, EdgeSpecError, ValueError) as e:
            print(json.dumps({"error": str(e)}), file=sys.stderr)
            return 1
        print(json.dumps(out, default=str))
        return 0

    return command


@_on_segment
def cmd_segment_attach(_args: argparse.Namespace, seg: SegmentFilter, _e: Enforcement) -> object:
    return asdict(seg.attach())


@_on_segment
def cmd_segment_detach(_args: argparse.Namespace, seg: SegmentFilter, _e: Enforcement) -> object:
    seg.detach()
    return {"detached": str(seg.pin_dir)}


@_on_segment
def cmd_segment_grant(args: argparse.Namespace, _seg: SegmentFilter, e: Enforcement) -> object:
    return e.grant(args.edge, args.ttl, args.idle, source="cli").result


@_on_segment
def cmd_segment_revoke(args: argparse.Namespace, _seg: SegmentFilter, e: Enforcement) -> object:
    return e.revoke(args.edge, source="cli").result


@_on_segment
def cmd_segment_quarantine(args: argparse.Namespace, _seg: SegmentFilter,
                           e: Enforcement) -> object:
    if args.state == "on":
        return e.quarantine(management=args.management, source="cli").result
    return e.release(source="cli").result


@_on_segment
def cmd_segment_mode(args: argparse.Namespace, seg: SegmentFilter, _e: Enforcement) -> object:
    seg.set_mode(args.mode)
    return seg.policy()


@_on_segment
def cmd_segment_counters(_args: argparse.Namespace, seg: SegmentFilter,
                         _e: Enforcement) -> object:
    return seg.counters()


@_on_segment
def cmd_segment_edges(_args: argparse.Namespace, _seg: SegmentFilter, e: Enforcement) -> object:
    return e.edges()


@_on_segment
def cmd_segment_policies(_args: argparse.Namespace, seg: SegmentFilter,
                         _e: Enforcement) -> object:
    return seg.label_policies.report()


@_on_segment
def cmd_segment_fqdn(_args: argparse.Namespace, seg: SegmentFilter, _e: Enforcement) -> object:
    now = time.monotonic_ns()
    return {**seg.fqdn.status(), "entries": [e.as_dict(now) for e in seg.fqdn.entries()]}


@_on_segment
def cmd_segment_policy_mode(args: argparse.Namespace, seg: SegmentFilter,
                            _e: Enforcement) -> object:
    seg.label_policies.set_mode(args.policy, args.mode)
    return seg.label_policies.report()[args.policy]


@_on_segment
def cmd_segment_status(_args: argparse.Namespace, seg: SegmentFilter, _e: Enforcement) -> object:
    return seg.status()


def register_segment(groups: argparse._SubParsersAction) -> None:
    p = groups.add_parser("segment", help="developer: drive a pinned segment filter directly",
                          description=__doc__,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pin-dir", default=str(PIN_ROOT / "segment"))
    p.add_argument("--iface")
    verbs = p.add_subparsers(dest="verb", required=True)
    sp = verbs.add_parser("attach")
    sp.set_defaults(func=cmd_segment_attach)
    sp.add_argument("--xdp-mode", default="native", choices=["native", "generic", "auto"])
    sp.add_argument("--tc-mode", default="tcx", choices=["tcx", "clsact", "auto"])
    sp.add_argument("--mode", default="enforce", choices=["enforce", "observe"])
    sp.add_argument("--arp", default="allow", choices=["allow", "deny"])
    sp.add_argument("--ipv6", default="deny", choices=["allow", "deny", "filter"])
    for name, fn in (("detach", cmd_segment_detach), ("status", cmd_segment_status),
                     ("counters", cmd_segment_counters), ("edges", cmd_segment_edges),
                     ("policies", cmd_segment_policies), ("fqdn", cmd_segment_fqdn)):
        verbs.add_parser(name).set_defaults(func=fn)
    sp = verbs.add_parser("grant")
    sp.set_defaults(func=cmd_segment_grant)
    sp.add_argument("edge")
    sp.add_argument("--ttl", type=float)
    sp.add_argument("--idle", type=float)
    sp = verbs.add_parser("revoke")
    sp.add_argument("edge")
    sp.set_defaults(func=cmd_segment_revoke)
    sp = verbs.add_parser("quarantine")
    sp.set_defaults(func=cmd_segment_quarantine)
    sp.add_argument("state", choices=["on", "off"])
    sp.add_argument("--management", action="append")
    sp = verbs.add_parser("policy-mode", help="flip one installed label policy between "
                          "observe and enforce (the controller's next push sets it again)")
    sp.add_argument("policy")
    sp.add_argument("mode", choices=["enforce", "observe"])
    sp.set_defaults(func=cmd_segment_policy_mode)
    sp = verbs.add_parser("mode")
    sp.add_argument("mode", choices=["enforce", "observe"])
    sp.set_defaults(func=cmd_segment_mode)
