"""The agent's enforcement verbs, each written once: the kernel call, one event, one result.

Every way a verb reaches the agent goes through :class:`Enforcement`: the control socket
and the developer CLI (source ``cli``), signed orders from the controller (``order``) and
the local policy (``policy``). Each method

- makes the kernel call (``bpf.SegmentFilter``, ``ExecMonitor``, ``ConnectMonitor``),
- records one ``agent`` event whose ``what`` is the verb, with ``source`` set,
- returns an :class:`Outcome`: ``result`` is what the control socket answers and what an
  order's acknowledgment carries (as JSON); ``summary`` is the line for people.

A component that is not running fails the same way for every caller (``ValueError``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from aegis_protocol.commands import ENFORCEMENT_VERBS
from aegis_protocol.events import Event, Scalar, Severity, agent_event

from .bpf.fqdn import checked as fqdn_checked
from .bpf.monitors import ConnectMonitor, ExecMonitor
from .bpf.policy_edges import parse_modes
from .bpf.segment import SegmentFilter

log = logging.getLogger("aegis.agent")

Source = Literal["cli", "order", "policy"]
SOURCES: tuple[Source, ...] = ("cli", "order", "policy")


@dataclass(frozen=True)
class Outcome:
    """What one verb did: the same shape whoever asked."""

    verb: str
    source: Source
    result: dict[str, Any]
    summary: str


@dataclass
class Enforcement:
    """The kernel components (None when not running) and where events go."""

    segment: SegmentFilter | None
    execs: ExecMonitor | None
    connects: ConnectMonitor | None
    record: Callable[[list[Event]], None]
    #: run first by every quarantine, whoever asked (the secret sink's wipe): a hook
    #: that fails is logged and never keeps the node from being quarantined
    on_quarantine: list[Callable[[str], object]] = field(default_factory=list)

    # -- the components, or the one error for a missing one --------------------------------
    def _segment(self) -> SegmentFilter:
        if self.segment is None:
            raise ValueError("segmentation is off (no segment.interface in the config)")
        return self.segment

    def _execs(self) -> ExecMonitor:
        if self.execs is None:
            raise ValueError("the exec monitor is not running")
        return self.execs

    def _connects(self) -> ConnectMonitor:
        if self.connects is None:
            raise ValueError("the connect monitor is not running")
        return self.connects

    def _done(self, verb: str, source: Source, result: dict[str, Any], summary: str,
              severity: Severity = "info", **data: Scalar) -> Outcome:
        self.record([agent_event(verb, severity, source=source,
                                 **{k: v for k, v in data.items() if v is not None})])
        return Outcome(verb, source, result, summary)

    # -- verbs ----------------------------------------------------------------------------
    def run(self, command: Any, source: Source) -> Outcome:
        """Run a parsed ``aegis_protocol.commands`` model of an enforcement verb."""
        if command.verb not in ENFORCEMENT_VERBS:
            raise ValueError(f"{command.verb} is not an enforcement verb")
        if source not in SOURCES:
            raise ValueError(f"unknown source {source!r}; known: {', '.join(SOURCES)}")
        method = getattr(self, command.verb.replace("-", "_"))
        return method(**command.model_dump(exclude={"verb"}), source=source)

    def grant(self, edge: str, ttl: float | None = None, idle: float | None = None, *,
              source: Source) -> Outcome:
        granted = str(self._segment().grant(edge, ttl, idle))
        return self._done("grant", source, {"granted": granted}, f"granted {granted}",
                          edge=granted, ttl=ttl, idle=idle)

    def revoke(self, edge: str, *, source: Source) -> Outcome:
        found = self._segment().revoke(edge)
        return self._done("revoke", source, {"revoked": found},
                          f"revoked {edge}" if found else f"{edge} was not granted",
                          edge=edge, found=found)

    def segment_policy(self, policies: list[str], entries: list[str],
                       fqdns: list[str] | None = None, resolvers: list[str] | None = None, *,
                       source: Source) -> Outcome:
        """Replace the label policy entries and the FQDN egress rules (the controller's
        compiled policies); everything is checked before anything is written."""
        seg = self._segment()
        modes = parse_modes(policies)
        fqdns, resolvers = fqdns or [], resolvers or []
        fqdn_checked(modes, fqdns, resolvers)
        done = seg.label_policies.apply(modes, entries)
        done |= seg.fqdn.apply(seg.fqdn.policy_indexes(), modes, fqdns, resolvers)
        return self._done("segment-policy", source, {**done, "policies": modes},
                          f"label policies: {len(modes)} policies, {len(entries)} entries "
                          f"({done['added']} added, {done['removed']} removed), "
                          f"{len(fqdns)} FQDN rules",
                          policies=",".join(f"{n}={m}" for n, m in sorted(modes.items()))[:1000],
                          entries=len(entries), **done)

    def quarantine(self, level: str = "soft", management: list[str] | None = None,
                   reason: str | None = None, *, source: Source) -> Outcome:
        for hook in self.on_quarantine:
            try:
                hook(f"{level} quarantine ({source})" + (f": {reason}" if reason else ""))
            except Exception as e:
                log.error("quarantine hook failed: %s: %s", type(e).__name__, e)
        seg = self._segment()
        seg.quarantine(True, management)
        return self._done("quarantine", source, seg.policy(),
                          "node quarantined (management path only)", "warning", level=level,
                          reason=reason,
                          management=", ".join(management) if management is not None else None)

    def release(self, reason: str | None = None, *, source: Source) -> Outcome:
        seg = self._segment()
        seg.quarantine(False)
        return self._done("release", source, seg.policy(), "node released from quarantine",
                          "warning", reason=reason)

    def deny_exec(self, path: str, *, source: Source) -> Outcome:
        execs = self._execs()
        execs.deny(path)
        return self._done("deny-exec", source, {"denied": execs.denied()},
                          f"exec of {path} denied", path=path)

    def deny_exec_file(self, dev: int, ino: int, *, source: Source,
                       seen_as: str | None = None, pid: int | None = None,
                       interpreted: bool = False) -> Outcome:
        """Deny the file an exec event names by its device and inode (``seen_as``: the
        path the event showed, for the record only: it is not resolved). With ``pid`` (the
        event's process) that process is killed too, once denied, if it still runs that
        file (``ExecMonitor.kill_running``); ``killed`` and ``kill_reason`` say what came of
        it. ``interpreted`` (the event's flag: an interpreter ran a #! script, and dev/ino
        are the interpreter's, e.g. /bin/sh): the file is not denied, since that would
        refuse every script and shell on the node; only the process is killed."""
        execs = self._execs()
        what = f"dev {dev} ino {ino}" + (f" (exec'd as {seen_as})" if seen_as else "")
        if interpreted:
            summary = (f"exec of {what} not denied: that file is the interpreter that ran "
                       "the script, and denying it would refuse every script it runs")
        else:
            execs.deny_file(dev, ino)  # first: a kill then cannot race a new exec of it
            summary = f"exec of {what} denied"
        result: dict[str, Any] = {"denied": execs.denied(),
                                  **({"interpreted": True} if interpreted else {})}
        killed: bool | None = None
        reason: str | None = None
        if pid is not None:
            killed, reason = execs.kill_running(pid, dev, ino)
            result.update(killed=killed, kill_reason=reason)
            summary += f"; {reason}"
        return self._done("deny-exec", source, result, summary,
                          "warning" if killed else "info", dev=dev, ino=ino, path=seen_as,
                          pid=pid, killed=killed, kill_reason=reason,
                          interpreted=True if interpreted else None)

    def allow_exec(self, path: str, *, source: Source) -> Outcome:
        execs = self._execs()
        found = execs.allow(path)
        return self._done("allow-exec", source, {"denied": execs.denied()},
                          f"exec of {path} allowed" if found else f"{path} was not denied",
                          path=path, found=found)

    def quarantine_cgroup(self, cgroup: str, *, source: Source,
                          cgroup_id: int | None = None) -> Outcome:
        """Refuse connects from ``cgroup``; with ``cgroup_id`` (from a connect event) only
        if the directory still is that cgroup."""
        connects = self._connects()
        connects.quarantine_cgroup(cgroup, expect_id=cgroup_id)
        return self._done("quarantine-cgroup", source, {"cgroups": connects.quarantined()},
                          f"connects from cgroup {cgroup} denied", "warning", cgroup=cgroup,
                          cgroup_id=cgroup_id)

    def release_cgroup(self, cgroup: str, *, source: Source) -> Outcome:
        connects = self._connects()
        found = connects.release_cgroup(cgroup)
        return self._done("release-cgroup", source,
                          {"released": found, "cgroups": connects.quarantined()},
                          f"cgroup {cgroup} may connect again" if found
                          else f"cgroup {cgroup} was not quarantined",
                          "warning", cgroup=cgroup, found=found)

    # -- what is enforced -------------------------------------------------------------------
    def edges(self) -> list[dict[str, object]]:
        """The granted edges, one shape for the socket and the developer CLI."""
        now = time.monotonic_ns()
        return [{"edge": str(s.edge), "state": s.state(now),
                 "expires_in": (s.expires_ns - now) / 1e9 if s.expires_ns else None,
                 "idle_timeout": s.idle_ns / 1e9 if s.idle_ns else None}
                for s in self._segment().edges()]
