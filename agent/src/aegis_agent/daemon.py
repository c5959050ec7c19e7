"""The agent daemon: start-up, readers, periodic tasks and shutdown.

One asyncio loop: ring buffers (segment drops, execs, connects) are drained through
``loop.add_reader`` into the spool in batches (at most one drain per ring every
``DRAIN_INTERVAL``; each batch one write and one fsync before its ring slots are
released), each event goes through the local policy (whose
decisions run as ``Enforcement`` verbs), expired edges are swept, the agent watches its
own CPU and memory, the control socket (``control_server``) serves the CLI and the
controller link runs signed orders (``orders.order_handlers``). SIGTERM closes this
process's handles and leaves every pin in place, so enforcement outlives the process
(``aegis-agent detach`` removes it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aegis_protocol.events import Event, agent_event

from . import __version__
from .bpf.monitors import ConnectMonitor, ExecMonitor
from .bpf.pinned import PinnedObject
from .bpf.ring import RingBatch
from .bpf.segment import SegmentFilter
from .bpf.syscall import BpfError, _libc, map_info
from .config import AgentConfig
from .control_server import ControlServer
from .dns_learning import DnsLearner
from .enforcement import Enforcement
from .events import ExecDecoder, RingIds, from_record
from .grant_usage import GrantUsage
from .journal_follower import JournalFollower
from .lockout import LockoutError, Snapshot, Unconfirmed, controller_peers, same_policy
from .notify import notify, watchdog_interval
from .policy import Decision, Policy, respond
from .spool import Spool
from .ssh_sessions import SshSessions
from .watchdog import SelfWatch

if TYPE_CHECKING:  # the controller link (httpx, cryptography) loads only when configured
    from .metrics import AgentMetrics
    from .secrets import SecretSink
    from .uplink import Uplink

log = logging.getLogger("aegis.agent")

WATCHDOG_EXIT = 3
#: Seconds between two drains of one ring: the records of that time go to the spool in one
#: write and one fsync (a ring woken per exec would cost a loop turn and an fsync each).
#: The kernel enforces denies itself; this only delays the record and the policy's
#: reaction, by at most this long.
DRAIN_INTERVAL = 0.05


def _from_policy(event: Event) -> bool:
    return event.kind == "policy" or (event.kind == "agent"
                                      and event.data.get("source") == "policy")


class _InEnforcement:
    """An attribute of the agent that is the same-named attribute of its enforcement."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, agent: Any, owner: type | None = None) -> Any:
        return getattr(agent.enforcement, self.name)

    def __set__(self, agent: Any, value: Any) -> None:
        setattr(agent.enforcement, self.name, value)


class Agent:
    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.spool = Spool(cfg.spool.dir, cfg.spool.max_bytes, cfg.spool.segment_bytes,
                           cfg.spool.high_water)
        self.policy = Policy(cfg.policy)
        self.enforcement = Enforcement(None, None, None, self._record_from_any_thread)
        self.watch = SelfWatch(cfg.watchdog)
        self.started = time.monotonic()
        #: label policy name -> (mode, counters) of its last report
        self._policy_counts: dict[str, tuple[object, dict[str, object]]] = {}
        self.last_reading: dict[str, object] = {}
        self.offset_ns = time.time_ns() - time.monotonic_ns()
        self._stop = asyncio.Event()
        #: set with _stop, for the threads that cannot await it (the long poll for orders)
        self._halt = threading.Event()
        #: the long poll saw pending orders: the uplink loop runs them between rounds
        self._orders_due = asyncio.Event()
        #: first and newest packets on granted edges (edge_used events, heartbeats)
        self.grants = GrantUsage()
        self._exit = 0
        self._server: ControlServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._readers: dict[int, asyncio.TimerHandle | None] = {}  # fd -> re-arm timer
        #: egress by domain: learns from the DNS answers the filter copies (seg_dns)
        self.learner: DnsLearner | None = None
        self._dns_fd: int | None = None
        self._rings: list[tuple[RingBatch, Any]] = []  # each ring and its decoder
        self._ring_sources: dict[int, str] = {}  # id(ring) -> exec, connect or segment
        self.drains: Counter[str] = Counter()  # ring drains per source (metrics)
        self.drained: Counter[str] = Counter()  # records drained per source (metrics)
        self.uplink: Uplink | None = None
        self.secrets: SecretSink | None = None

    # the kernel components live in the enforcement; the start-up code sets them here
    segment: SegmentFilter | None = _InEnforcement()  # type: ignore[assignment]
    execs: ExecMonitor | None = _InEnforcement()  # type: ignore[assignment]
    connects: ConnectMonitor | None = _InEnforcement()  # type: ignore[assignment]

    # -- events ----------------------------------------------------------------------------
    def record(self, events: list[Event], *, written: bool = False) -> None:
        """Spool ``events`` durably, then run the policy on them.

        ``written``: the events are already durable in the spool (a ring drain wrote and
        fsynced them before releasing their ring slots)."""
        if not events:
            return
        if not written:
            self.spool.append(events)
        if self.spool.alarm_changed() or (self.spool.alarm and not self._alarm_reported):
            self._alarm_reported = True
            st = self.spool.status()
            log.warning("spool above its high-water mark", extra={"spool": st})
            self.spool.append([agent_event("spool_high_water", "warning",
                                            used_bytes=st["used_bytes"],
                                            max_bytes=st["max_bytes"])])
        elif not self.spool.alarm:
            self._alarm_reported = False
        # a policy's own actions (policy events, verbs with source policy) are not judged
        # again: a rule can never trigger itself
        decisions = [d for e in events if not _from_policy(e) for d in self.policy.evaluate(e)]
        if decisions:
            self.spool.append([self._act(d) for d in decisions])

    _alarm_reported = False
    _metrics: AgentMetrics | None = None
    ssh_sessions: SshSessions | None = None

    def _record_from_any_thread(self, events: list[Event]) -> None:
        """``record``, handed to the loop when called from the controller link's thread."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self.record, events)
            return
        self.record(events)

    def _act(self, d: Decision) -> Event:
        data = {"rule": d.rule, "action": d.action, "trigger_kind": d.event.kind,
                "trigger_id": str(d.event.id)}
        try:
            data["result"] = respond(d, self.enforcement)
        except (BpfError, OSError, ValueError) as e:
            data["result"] = f"failed: {e}"
        severity = {"log": "info", "alert": "warning"}.get(d.action, "critical")
        (log.warning if severity != "info" else log.info)(
            "policy %s: %s", d.rule, d.action, extra={"decision": data})
        return Event(ts_ns=time.time_ns(), kind="policy", severity=severity, data=data)


    # A kernel ring buffer is the only copy of an event until the agent writes it out. The
    # agent reads its rings from their memory mapping (bpf.ring.RingBatch), so a record's
    # slot is released only when the agent says so: each drain decodes everything waiting,
    # appends it to the spool in one write and one fsync, and only then releases the
    # slots. Killed at any point, the agent leaves what it had not made durable in the
    # (pinned) ring for its next start, which spools it under the same event ids (they
    # are the records' ring positions, events.RingIds), so the controller stores it once.
    def _drain(self, ring: RingBatch, to_events: Any) -> None:
        records = ring.pending()
        if not records:
            return
        try:
            events = to_events(records)
        except Exception:  # one bad record must not hold the ring forever
            events = self._one_by_one(records, to_events)
        self.spool.append(events)  # one write + one fsync for the whole batch
        ring.release()
        source = self._ring_sources.get(id(ring), "other")
        self.drains[source] += 1
        self.drained[source] += len(records)
        self.record(events, written=True)

    @staticmethod
    def _one_by_one(records: list[tuple[int, bytes]], to_events: Any) -> list[Event]:
        """A batch with a record that does not decode: the others as events, that one as
        an agent event saying so (it is released with the rest, never retried)."""
        events: list[Event] = []
        for pos, raw in records:
            try:
                events += to_events([(pos, raw)])
            except Exception as e:  # reported, see above
                events.append(agent_event("ring_record_undecodable", "warning", ring_pos=pos,
                                          size=len(raw), error=f"{type(e).__name__}: {e}"[:300]))
        return events

    def _drain_later(self, ring: RingBatch, to_events: Any) -> None:
        """The ring's reader callback: drain now, then leave the ring unwatched for
        ``DRAIN_INTERVAL`` so what arrives meanwhile comes in one batch."""
        loop = asyncio.get_running_loop()
        fd = ring.fileno()
        loop.remove_reader(fd)
        try:
            self._drain(ring, to_events)
        finally:  # a failed drain (disk full) is retried at the same pace, records kept
            self._readers[fd] = loop.call_later(DRAIN_INTERVAL, self._watch, ring, to_events)

    def _watch(self, ring: RingBatch, to_events: Any) -> None:
        fd = ring.fileno()
        self._readers[fd] = None
        asyncio.get_running_loop().add_reader(fd, self._drain_later, ring, to_events)

    def _unwatch(self, fd: int) -> None:
        timer = self._readers.pop(fd, None)
        if timer is not None:
            timer.cancel()
        asyncio.get_running_loop().remove_reader(fd)

    # -- set-up -------------------------------------------------------------------------------
    def _start_segment(self) -> None:
        """Attach (or find) the filter and apply the config's management peers, with the
        controller always among them (lock-out guard); with ``confirm_seconds``, a policy
        that changed is unconfirmed until ``aegis-agent confirm``."""
        sc = self.cfg.segment
        if not sc.interface:
            log.info("no segment.interface configured: segmentation is off")
            return
        # before anything is attached: a controller that cannot be placed refuses the filter
        protected = (controller_peers(self.cfg.controller.url, sc.ipv6)
                     if self.cfg.controller else [])
        seg = SegmentFilter(sc.interface, sc.pin_dir, xdp_mode=sc.xdp_mode, tc_mode=sc.tc_mode,
                            mode=sc.mode, arp=sc.arp, ipv6=sc.ipv6)
        if seg.loaded:
            seg.load()  # re-opens the pins; an older build's are recreated with their policy
        before = seg.snapshot() if seg.loaded else None
        info = seg.attach()
        # the controller and the configured (break-glass) peers pass in every mode: no
        # quarantine order, rule, CLI list or revert can leave them out (issue 15 part 6)
        seg.protect([*protected, *sc.management])
        if not info.reused:
            for g in sc.edges:
                seg.grant(g.edge, g.ttl, g.idle)
        if not seg.config().quarantine:  # a quarantine keeps the list it was given
            seg.quarantine(False, sc.management)
        self.segment = seg
        self.record([agent_event("segment_attached", detail=str(info), reused=info.reused,
                                 protected=", ".join(map(str, protected)) or None)])
        self._arm_confirmation(before)

    # -- timed confirmation of the segment policy -----------------------------------------
    @property
    def _unconfirmed_file(self) -> Path:
        return unconfirmed_file(self.cfg)

    def _arm_confirmation(self, before: Snapshot | None) -> None:
        seconds = self.cfg.segment.confirm_seconds
        if not seconds:
            Unconfirmed.clear(self._unconfirmed_file)
            return
        assert self.segment is not None
        # an earlier run's unconfirmed change: its previous policy is still the one to go
        # back to, by its deadline (an agent restarting in the window gets no new one)
        pending = Unconfirmed.load(self._unconfirmed_file)
        if pending is None:
            if before is not None and same_policy(before, self.segment.snapshot()):
                return
            pending = Unconfirmed(time.time() + seconds, before)
            pending.save(self._unconfirmed_file)
        self._unconfirmed = pending
        left = max(0.0, pending.deadline - time.time())
        assert self._loop is not None
        self._revert_timer = self._loop.call_later(left, self._revert_segment)
        log.warning("segment policy applied unconfirmed: `aegis-agent confirm` within %.0f s "
                    "or it is reverted", left)
        self.record([agent_event("segment_unconfirmed", "warning", seconds=round(left, 1),
                                  revert_to="previous policy" if pending.previous else "detach")])

    def confirm(self) -> dict[str, object]:
        """``aegis-agent confirm``: keep the policy applied at start."""
        pending, self._unconfirmed = self._unconfirmed, None
        if pending is None:
            return {"confirmed": False, "detail": "nothing to confirm"}
        if self._revert_timer is not None:
            self._revert_timer.cancel()
            self._revert_timer = None
        Unconfirmed.clear(self._unconfirmed_file)
        self.record([agent_event("segment_confirmed")])
        return {"confirmed": True, "detail": "segment policy kept"}

    def _revert_segment(self) -> None:
        pending, self._unconfirmed, self._revert_timer = self._unconfirmed, None, None
        seg = self.segment
        if pending is None or seg is None:
            return
        try:
            if pending.previous is None:
                self._stop_dns_learner()
                if self._segment_reader is not None:
                    self._unwatch(self._segment_reader)
                    self._rings = [r for r in self._rings
                                   if r[0].fileno() != self._segment_reader]
                    self._segment_reader = None
                self.segment = None
                seg.detach()
                what = "filter detached (there was none before)"
            else:
                seg.restore(pending.previous)
                what = "previous policy restored"
        except (BpfError, OSError) as e:
            log.error("segment policy not confirmed and the revert failed: %s", e)
            self.record([agent_event("segment_revert_failed", "critical", error=str(e))])
            return
        Unconfirmed.clear(self._unconfirmed_file)
        log.error("segment policy not confirmed in time: %s", what)
        self.record([agent_event("segment_reverted", "critical", detail=what)])

    _unconfirmed: Unconfirmed | None = None
    _revert_timer: asyncio.TimerHandle | None = None
    _segment_reader: int | None = None

    def _start_monitors(self) -> None:
        mc = self.cfg.monitors
        if mc.exec:
            mon = ExecMonitor(mc.pin_dir / "exec", lsm=mc.lsm, scope=mc.scope)
            try:
                info = mon.start(load_apart=True)
                self.execs = mon
                self.record([agent_event("exec_monitor", mode=str(info["mode"]),
                                          reason=str(info["reason"]))])
            except (BpfError, OSError) as e:
                self.record([agent_event("exec_monitor_unavailable", "warning", error=str(e))])
            for path in mc.exec_deny if self.execs else []:
                try:
                    self.execs.deny(path)
                except (BpfError, OSError) as e:
                    self.record([agent_event("exec_deny_failed", "warning", path=path,
                                              error=str(e))])
        if mc.connect:
            cmon = ConnectMonitor(mc.pin_dir / "connect", scope=mc.scope)
            try:
                cmon.start(load_apart=True)
                self.connects = cmon
            except (BpfError, OSError) as e:
                self.record([agent_event("connect_monitor_unavailable", "warning",
                                          error=str(e))])

    def _start_dns_learner(self) -> None:
        """Learn from the DNS answers in seg_dns whenever some wait (those that came
        while no agent ran are still in the pinned ring: learned now)."""
        if self.segment is None:
            return
        self.learner = DnsLearner(self.segment, self.cfg.segment.fqdn_ttl_floor)
        reader = self.learner.reader()
        self._dns_fd = reader.fileno()
        asyncio.get_running_loop().add_reader(self._dns_fd, reader.drain)
        reader.drain()

    def _stop_dns_learner(self) -> None:
        if self._dns_fd is not None:
            asyncio.get_running_loop().remove_reader(self._dns_fd)
            self._dns_fd = None

    def _add_reader(self, part: PinnedObject) -> None:
        """Drain ``part``'s ring buffer into the spool whenever records wait."""
        ring = part.batch()
        ids = RingIds(map_info(ring.fileno()).id)
        if isinstance(part, ExecMonitor):
            to_events = ExecDecoder(self.offset_ns, ids).events
            krl = self.cfg.ssh_krl
            if krl is not None and krl.session_log is not None:
                self.ssh_sessions = SshSessions(
                    JournalFollower() if krl.session_log == "journal" else krl.session_log,
                    wait=krl.session_wait)
                to_events = self.ssh_sessions.marking(to_events)
        else:
            def to_events(records: list[tuple[int, bytes]]) -> list[Event]:
                return [from_record(part.decode(raw), self.offset_ns).model_copy(
                    update={"id": ids(pos)}) for pos, raw in records]
        self._rings.append((ring, to_events))
        self._ring_sources[id(ring)] = ("segment" if part is self.segment else
                                             "exec" if isinstance(part, ExecMonitor)
                                             else "connect")
        self._watch(ring, to_events)
        if part is self.segment:
            self._segment_reader = ring.fileno()

    # -- controller link ------------------------------------------------------------------------
    def _start_uplink(self) -> None:
        cc = self.cfg.controller
        if cc is None:
            return
        assert self.cfg.node_id is not None  # the config requires it with a controller
        from .orders import order_handlers
        from .secrets import SecretSink
        from .uplink import Uplink
        if self.cfg.secrets is not None:
            # every quarantine (order, policy, CLI) wipes the secrets first
            self.secrets = SecretSink(self.cfg.secrets, self._record_from_any_thread)
            self.enforcement.on_quarantine.append(self.secrets.wipe)
        handlers = order_handlers(self.enforcement)
        if self.cfg.ssh_krl is not None:
            from .revoked_keys import RevokedKeys
            handlers["revoke-ssh-cert"] = RevokedKeys(self.cfg.ssh_krl).revoke
        self.uplink = Uplink(cc, self.cfg.node_id, self.spool, handlers,
                             bpf_state=self.bpf_state, secrets=self.secrets,
                             lost_events=self.lost_events,
                             edges_seen=lambda: self.grants.seen)

    def _open_secrets_path(self) -> None:
        """Consumers that are not root reach their secret files (0400/0440, their own)
        through the control socket's directory when the secrets live under it: it becomes
        0711 (traverse, no listing); everything in it stays the agent's (0600, and the
        socket answers root only)."""
        sc = self.cfg.secrets
        run_dir = self.cfg.control.socket.parent
        if sc is not None and run_dir in sc.dir.parents:
            os.chmod(run_dir, 0o711)  # noqa: S103 - traverse only, see above

    def attach_modes(self) -> dict[str, str]:
        """Each enforcement component's attach mode (segment, exec, connect)."""
        modes: dict[str, str] = {}
        if self.segment is not None:
            info = self.segment.attach_info()
            modes["segment"] = f"xdp/{info.xdp_mode} {info.tc_mode}" if info else "detached"
        if self.execs is not None:
            modes["exec"] = self.execs.mode
        if self.connects is not None:
            modes["connect"] = "cgroup"
        return modes

    def bpf_state(self) -> list[dict[str, str | int]]:
        """The enforcement as the attestation reports it: each component with its attach
        mode, and the programs and links pinned for it, read back from the kernel."""
        from . import measure
        state: list[dict[str, str | int]] = []
        parts = {"segment": self.segment, "exec": self.execs, "connect": self.connects}
        for component, mode in self.attach_modes().items():
            state.append({"component": component, "mode": mode})
            state += measure.bpf_objects(component, parts[component].pin_dir)  # type: ignore[union-attr]
        return state

    def lost_events(self) -> dict[str, int]:
        """Events lost so far, per source: the kernel counters of full ring buffers (they
        live with the pinned maps, across agent restarts) and the spool's drops (this
        process's). The controller link reports their increase with each heartbeat."""
        lost: dict[str, int] = {"spool": self.spool.dropped}
        for source, mon in (("exec", self.execs), ("connect", self.connects)):
            if mon is not None:
                with contextlib.suppress(BpfError, OSError):
                    lost[source] = int(mon.stats()["lost"])  # type: ignore[call-overload]
        if self.segment is not None:
            with contextlib.suppress(BpfError, OSError):
                lost["segment"] = self.segment.counters()["events"]["lost"]
        return lost

    async def _uplink_loop(self) -> None:
        """A round every ``interval`` (uplink.tick); between rounds, the orders the long
        poll (``uplink.poll_orders``) announces run at once."""
        assert self.uplink is not None and self.cfg.controller is not None
        while not self._stop.is_set():
            await asyncio.to_thread(self.uplink.tick)
            due = time.monotonic() + self.cfg.controller.interval
            while not self._stop.is_set() and (left := due - time.monotonic()) > 0:
                if await self._until(self._orders_due, left):
                    self._orders_due.clear()
                    await asyncio.to_thread(self.uplink.run_orders_now)

    async def _until(self, event: asyncio.Event, timeout: float) -> bool:
        """Wait for ``event``, the agent's stop or ``timeout``; True when ``event`` is set."""
        waits = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(self._stop.wait())]
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        return event.is_set()

    def status(self) -> dict[str, object]:
        return {"version": __version__, "pid": os.getpid(), "node_id": self.cfg.node_id,
                "uptime_s": round(time.monotonic() - self.started, 1),
                "segment": self.segment.status() if self.segment else None,
                "dns_learning": dict(self.learner.counts) if self.learner else None,
                "segment_unconfirmed_s": (round(max(0.0, self._unconfirmed.deadline
                                                    - time.time()), 1)
                                          if self._unconfirmed else None),
                "exec_monitor": self.execs.stats() if self.execs else None,
                "connect_monitor": self.connects.stats() if self.connects else None,
                "spool": self.spool.status(), "watchdog": self.last_reading,
                "controller": self.uplink.last if self.uplink else None,
                "secrets": self.secrets.status() if self.secrets else None,
                "ssh_sessions": self.ssh_sessions.status() if self.ssh_sessions else None}

    # -- periodic work ---------------------------------------------------------------------
    async def _every(self, seconds: float, fn: Any) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), seconds)
            if not self._stop.is_set():
                fn()

    def _sweep(self) -> None:
        """Drop expired and idle edges (``edges_expired``), and report each edge with an
        idle timeout (a just-in-time grant) the first time a packet is seen on it
        (``edge_used``, ``seen_by_ns``: the wall time of the newest packet by this sweep,
        so the first one came at most a sweep interval earlier)."""
        if not self.segment:
            return
        states = self.segment.edges()
        events = self.grants.observe(states)
        gone = self.segment.sweep(states)
        try:
            self.segment.fqdn.sweep()
        except (BpfError, OSError) as e:
            log.warning("learned FQDN addresses not swept: %s", e)
        if gone:
            events.append(agent_event("edges_expired", edges=",".join(map(str, gone))))
        self.record(events)

    def _report_policies(self) -> None:
        """One ``label_policy_counters`` event per label policy whose counters moved since
        the last report (they reach the controller with the other events)."""
        if not self.segment:
            return
        try:
            report = self.segment.label_policies.report()
        except (BpfError, OSError) as e:
            log.warning("label policy counters unreadable: %s", e)
            return
        events = []
        for name, row in report.items():
            counts = {k: v for k, v in row.items() if k.endswith(("_packets", "_bytes"))}
            if self._policy_counts.get(name) != (row["mode"], counts):
                self._policy_counts[name] = (row["mode"], counts)
                events.append(agent_event("label_policy_counters", policy=name,
                                          mode=str(row["mode"]), edges=len(row["edges"]),  # type: ignore[arg-type]
                                          **counts))  # type: ignore[arg-type]
        if events:
            self.record(events)

    def _check_self(self) -> None:
        r = self.watch.check()
        self.last_reading = {"cpu_percent": round(r.cpu_percent, 1), "rss_mb": round(r.rss_mb, 1),
                             "over": r.over}
        if r.over:
            log.warning("agent over its limits: %s", ", ".join(r.over),
                        extra={"watchdog": self.last_reading})
            self.record([agent_event("watchdog", "warning", over="; ".join(r.over))])
        if r.fatal:
            log.error("agent over its limits for %d checks: exiting so systemd restarts it",
                      self.cfg.watchdog.grace)
            self._exit = WATCHDOG_EXIT
            self._stop.set()

    # -- run ----------------------------------------------------------------------------------
    async def run(self) -> int:
        loop = self._loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        self.record([agent_event("start", version=__version__, pid=os.getpid())])
        for p in self.spool.problems:
            log.error("spool segment set aside: %s (%s)", p.segment, p.reason,
                      extra={"moved_to": p.moved_to})
            self.record([agent_event("spool_corrupt", "critical", segment=p.segment,
                                      reason=p.reason, moved_to=p.moved_to)])
        try:
            self._start_segment()
        except LockoutError as e:
            log.error("segmentation refused: %s", e)
            self.record([agent_event("segment_refused", "critical", error=str(e))])
            self.spool.close()
            return 1
        self._start_monitors()
        for part in (self.segment, self.execs, self.connects):
            if part is not None:
                self._add_reader(part)
        self._start_dns_learner()
        _trim_heap()
        self._server = ControlServer(self.cfg.control.socket, self.enforcement, self.spool,
                                     self.status, confirm=self.confirm)
        await self._server.start()
        self._start_uplink()
        self._open_secrets_path()
        tasks = [asyncio.create_task(self._every(self.cfg.segment.sweep_interval, self._sweep)),
                 asyncio.create_task(self._every(self.cfg.watchdog.interval, self._check_self)),
                 asyncio.create_task(self._every(self.cfg.segment.policy_report_interval,
                                                 self._report_policies))]
        if self.uplink:
            tasks.append(asyncio.create_task(self._uplink_loop()))
            if self.cfg.controller is not None and self.cfg.controller.orders_wait > 0:
                # its own (daemon) thread: a stop never waits for the poll's answer
                threading.Thread(target=self.uplink.poll_orders, daemon=True,
                                 args=(self._halt, lambda: loop.call_soon_threadsafe(
                                     self._orders_due.set)),
                                 name="orders-long-poll").start()
        if self.cfg.metrics.textfile is not None:
            from .metrics import AgentMetrics  # prometheus_client: only when configured

            self._metrics = AgentMetrics(self, self.cfg.metrics.textfile)
            self._metrics.write()
            tasks.append(asyncio.create_task(self._every(self.cfg.metrics.interval,
                                                         self._metrics.write)))
        ping = watchdog_interval()
        if ping:
            tasks.append(asyncio.create_task(self._every(ping, lambda: notify("WATCHDOG=1"))))
        notify("READY=1")
        notify(f"STATUS=enforcing: segment={'on' if self.segment else 'off'}, "
               f"exec={'on' if self.execs else 'off'}, connect={'on' if self.connects else 'off'}")
        log.info("agent ready", extra={"status": self.status()})
        await self._stop.wait()
        self._halt.set()
        notify("STOPPING=1")
        for t in tasks:
            t.cancel()
        self.shutdown()
        return self._exit

    def shutdown(self) -> None:
        """Close handles; pins and enforcement stay."""
        for fd in list(self._readers):
            self._unwatch(fd)
        self._stop_dns_learner()
        for ring, to_events in self._rings:  # what came since the last drain
            with contextlib.suppress(Exception):  # kept in the ring for the next start
                self._drain(ring, to_events)
        if self._server:
            self._server.close()
        if self.secrets is not None:  # files stay until their leases end (see sink.close)
            self.secrets.close()
        with contextlib.suppress(Exception):
            self.record([agent_event("stop", exit=self._exit)])
        if self._metrics is not None:  # the last figures, before the handles close
            self._metrics.write()
        for part in (self.segment, self.execs, self.connects):
            if part is not None:
                part.close()
        if self.ssh_sessions is not None:  # the journal reader's child ends with it
            self.ssh_sessions.close()
        self.spool.close()
        log.info("agent stopped; enforcement stays pinned", extra={"exit": self._exit})


def _trim_heap() -> None:
    """Give the C heap that loading freed (libbpf's parse of the kernel's BTF, several
    MiB) back to the system: glibc keeps freed heap mapped otherwise, and it would count
    in the agent's RSS for the life of the process."""
    with contextlib.suppress(AttributeError, OSError):  # not glibc: nothing to trim
        _libc().malloc_trim(0)


def unconfirmed_file(cfg: AgentConfig) -> Path:
    """Where an unconfirmed segment policy is kept: tmpfs, beside the control socket (a
    reboot clears it with the pins)."""
    return cfg.control.socket.parent / "segment-unconfirmed.json"


def detach(cfg: AgentConfig) -> dict[str, object]:
    """Remove everything the agent attached and pinned (run with the daemon stopped)."""
    done: dict[str, object] = {}
    Unconfirmed.clear(unconfirmed_file(cfg))  # nothing left to confirm or revert
    if cfg.segment.interface or cfg.segment.pin_dir.exists():
        seg = SegmentFilter(cfg.segment.interface, cfg.segment.pin_dir)
        if seg.loaded:
            seg.detach()
            done["segment"] = "detached"
    for name, mon in (("exec", ExecMonitor(cfg.monitors.pin_dir / "exec")),
                      ("connect", ConnectMonitor(cfg.monitors.pin_dir / "connect"))):
        if mon.pin_dir.exists():
            mon.stop()
            done[name] = "detached"
    return done

