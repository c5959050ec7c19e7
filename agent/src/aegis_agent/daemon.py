"""The agent daemon: kernel enforcement and monitors in, durable events out.

One asyncio loop: ring buffers (segment drops, execs, connects) are drained through
``loop.add_reader`` into the spool, each event goes through the local policy, expired
edges are swept, the agent watches its own CPU and memory, and the control socket
serves the CLI. SIGTERM closes this process's handles and leaves every pin in place, so
enforcement outlives the process (``aegis-agent detach`` removes it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

from aegis_protocol.events import Event, agent_event

from . import __version__, measure
from .bpf.edges import EdgeSpecError
from .bpf.monitors import ConnectMonitor, ExecMonitor
from .bpf.pinned import PinnedObject
from .bpf.ring import RingReader
from .bpf.segment import SegmentFilter
from .bpf.syscall import BpfError
from .config import AgentConfig
from .control import MAX_LINE, parse_request, peer_uid
from .events import Record, from_record
from .notify import notify, watchdog_interval
from .policy import Decision, Policy
from .spool import Spool
from .uplink import Uplink
from .watchdog import SelfWatch

log = logging.getLogger("aegis.agent")

WATCHDOG_EXIT = 3


def cgroup_of(pid: int) -> str:
    """The cgroup v2 directory of ``pid`` (hybrid hierarchy: under /sys/fs/cgroup/unified)."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            rel = line[3:].lstrip("/")
            for root in (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup")):
                if (root / "cgroup.procs").exists() and (root / rel / "cgroup.procs").exists():
                    return str(root / rel)
    raise FileNotFoundError(f"no cgroup v2 directory found for pid {pid}")


class _Args:
    """A request's arguments, checked for presence and type as they are read."""

    def __init__(self, cmd: str, args: dict[str, Any]) -> None:
        self.cmd, self.args = cmd, args

    def get(self, name: str, kind: type | tuple[type, ...] = str, default: Any = ...) -> Any:
        if name not in self.args:
            if default is ...:
                raise ValueError(f"{self.cmd}: missing argument {name!r}")
            return default
        value = self.args[name]
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            raise ValueError(f"{self.cmd}: argument {name!r} has the wrong type "
                             f"({type(value).__name__})")
        return value


class Agent:
    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.spool = Spool(cfg.spool.dir, cfg.spool.max_bytes, cfg.spool.segment_bytes,
                           cfg.spool.high_water)
        self.policy = Policy(cfg.policy)
        self.segment: SegmentFilter | None = None
        self.execs: ExecMonitor | None = None
        self.connects: ConnectMonitor | None = None
        self.watch = SelfWatch(cfg.watchdog)
        self.started = time.monotonic()
        self.last_reading: dict[str, object] = {}
        self.offset_ns = time.time_ns() - time.monotonic_ns()
        self._stop = asyncio.Event()
        self._exit = 0
        self._server: asyncio.AbstractServer | None = None
        self._readers: list[int] = []
        self.uplink: Uplink | None = None
        self._written: list[Event] = []

    # -- events ----------------------------------------------------------------------------
    def record(self, events: list[Event], *, written: bool = False) -> None:
        """Spool ``events`` durably, then run the policy on them.

        ``written``: the events are already in the spool file (a ring-buffer sink wrote
        each one before the ring advanced past it) and only need the fsync."""
        if not events:
            return
        if written:
            self.spool.sync()
        else:
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
        decisions = [d for e in events if e.kind != "policy" for d in self.policy.evaluate(e)]
        if decisions:
            self.spool.append([self._act(d) for d in decisions])

    _alarm_reported = False

    def _act(self, d: Decision) -> Event:
        data = {"rule": d.rule, "action": d.action, "trigger_kind": d.event.kind,
                "trigger_id": str(d.event.id)}
        try:
            data["result"] = self._execute(d)
        except (BpfError, OSError, ValueError) as e:
            data["result"] = f"failed: {e}"
        severity = {"log": "info", "alert": "warning"}.get(d.action, "critical")
        (log.warning if severity != "info" else log.info)(
            "policy %s: %s", d.rule, d.action, extra={"decision": data})
        return Event(ts_ns=time.time_ns(), kind="policy", severity=severity, data=data)

    def _execute(self, d: Decision) -> str:
        ev = d.event
        if d.action in ("log", "alert"):
            return "recorded"
        if d.action == "deny":
            if ev.kind.startswith("exec") and self.execs:
                self.execs.deny(str(ev.data["filename"]))
                return f"exec of {ev.data['filename']} denied"
            if ev.kind.startswith("connect") and self.connects:
                cg = cgroup_of(int(ev.data["pid"]))  # type: ignore[arg-type]
                self.connects.quarantine_cgroup(cg)
                return f"connects from cgroup {cg} denied"
            return "nothing to deny for this event kind"
        if self.segment:
            self.segment.quarantine(True)
            return "node quarantined (management path only)"
        return "no segment filter configured: cannot quarantine the node"

    # A kernel ring buffer is the only copy of an event until the agent writes it out, and
    # libbpf moves the ring's consumer position past each record right after its callback.
    # So the sink writes each event to the spool file at once: kill -9 at any point loses
    # nothing (the page cache survives the process); the drain then fsyncs the batch and
    # runs the policy on it. One sink and one drain serve segment, exec and connect.
    def _sink(self, record: Record) -> None:
        event = from_record(record, self.offset_ns)
        self.spool.append([event], sync=False)
        self._written.append(event)

    def _drain(self, reader: RingReader[Record]) -> None:
        reader.drain()
        events, self._written = self._written, []
        self.record(events, written=True)

    # -- set-up -------------------------------------------------------------------------------
    def _start_segment(self) -> None:
        sc = self.cfg.segment
        if not sc.interface:
            log.info("no segment.interface configured: segmentation is off")
            return
        seg = SegmentFilter(sc.interface, sc.pin_dir, xdp_mode=sc.xdp_mode, tc_mode=sc.tc_mode,
                            mode=sc.mode, arp=sc.arp, ipv6=sc.ipv6)
        info = seg.attach()
        if not info.reused:
            seg.quarantine(False, sc.management)
            for g in sc.grants():
                seg.grant(g.edge, g.ttl, g.idle)
        self.segment = seg
        self.record([agent_event("segment_attached", detail=str(info), reused=info.reused)])

    def _start_monitors(self) -> None:
        mc = self.cfg.monitors
        if mc.exec:
            mon = ExecMonitor(mc.pin_dir / "exec", lsm=mc.lsm, scope=mc.scope)
            try:
                info = mon.start()
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
                cmon.start()
                self.connects = cmon
            except (BpfError, OSError) as e:
                self.record([agent_event("connect_monitor_unavailable", "warning",
                                          error=str(e))])

    def _add_reader(self, part: PinnedObject) -> None:
        """Drain ``part``'s ring buffer into the spool whenever records wait."""
        reader = part.reader(self._sink)
        asyncio.get_running_loop().add_reader(reader.fileno(), self._drain, reader)
        self._readers.append(reader.fileno())

    # -- controller link ------------------------------------------------------------------------
    def _order_handlers(self) -> dict[str, Any]:
        """What signed orders from the controller do here (run on the uplink thread)."""
        loop = asyncio.get_running_loop()

        def note(what: str, **data: Any) -> None:
            loop.call_soon_threadsafe(self.record, [agent_event(what, "warning", **data)])

        def grant(args: dict[str, Any]) -> str:
            edge = self._need_segment().grant(str(args["edge"]), args.get("ttl"), args.get("idle"))
            note("order_grant", edge=str(edge))
            return f"granted {edge}"

        def revoke(args: dict[str, Any]) -> str:
            found = self._need_segment().revoke(str(args["edge"]))
            note("order_revoke", edge=str(args["edge"]), found=found)
            return f"revoked {args['edge']}" if found else f"{args['edge']} was not granted"

        def quarantine(args: dict[str, Any]) -> str:
            mgmt = args.get("management")
            self._need_segment().quarantine(True, mgmt if isinstance(mgmt, list) else None)
            note("order_quarantine", level=str(args.get("level", "soft")))
            return "quarantined: management path only"

        def release(_args: dict[str, Any]) -> str:
            self._need_segment().quarantine(False)
            note("order_release")
            return "released"

        return {"grant": grant, "revoke": revoke, "quarantine": quarantine, "release": release}

    def _start_uplink(self) -> None:
        cc = self.cfg.controller
        if cc is None:
            return
        assert self.cfg.node_id is not None  # the config requires it with a controller
        self.uplink = Uplink(cc, self.cfg.node_id, self.spool, self._order_handlers(),
                             bpf_state=self.bpf_state)

    def bpf_state(self) -> list[dict[str, str | int]]:
        """The enforcement as the attestation reports it: each component with its attach
        mode, and the programs and links pinned for it, read back from the kernel."""
        state: list[dict[str, str | int]] = []
        if self.segment is not None:
            info = self.segment.attach_info()
            mode = f"xdp/{info.xdp_mode} {info.tc_mode}" if info else "detached"
            state.append({"component": "segment", "mode": mode})
            state += measure.bpf_objects("segment", self.segment.pin_dir)
        if self.execs is not None:
            state.append({"component": "exec", "mode": self.execs.mode})
            state += measure.bpf_objects("exec", self.execs.pin_dir)
        if self.connects is not None:
            state.append({"component": "connect", "mode": "cgroup"})
            state += measure.bpf_objects("connect", self.connects.pin_dir)
        return state

    async def _uplink_loop(self) -> None:
        assert self.uplink is not None and self.cfg.controller is not None
        while not self._stop.is_set():
            await asyncio.to_thread(self.uplink.tick)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.cfg.controller.interval)

    # -- control socket --------------------------------------------------------------------------
    async def _serve(self) -> None:
        path = self.cfg.control.socket
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(path.parent, 0o700)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._client, str(path),
                                                           limit=MAX_LINE)
        finally:
            os.umask(old)

    async def _client(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        try:
            sock = writer.get_extra_info("socket")
            if peer_uid(sock) != 0:
                await self._answer(writer, {"ok": False,
                                            "error": "the control socket is root-only"})
                return
            while line := await reader.readline():
                try:
                    cmd, args = parse_request(line)
                    answer = {"ok": True, "result": self.handle(cmd, args)}
                except (ValueError, TypeError, EdgeSpecError, BpfError, OSError) as e:
                    answer = {"ok": False, "error": str(e)}
                await self._answer(writer, answer)
        except (asyncio.LimitOverrunError, ValueError):
            await self._answer(writer, {"ok": False, "error": "request line too long"})
        except ConnectionError:
            pass
        finally:
            writer.close()

    @staticmethod
    async def _answer(writer: asyncio.StreamWriter, answer: dict) -> None:
        writer.write(json.dumps(answer, default=str).encode() + b"\n")
        await writer.drain()

    def _need_segment(self) -> SegmentFilter:
        if self.segment is None:
            raise ValueError("segmentation is off (no segment.interface in the config)")
        return self.segment

    def handle(self, cmd: str, args: dict[str, Any]) -> Any:
        """One control request; raises ValueError (and friends) with what was wrong."""
        return getattr(self, "_cmd_" + cmd.replace("-", "_"))(_Args(cmd, args))

    def _cmd_ping(self, _a: _Args) -> Any:
        return "pong"

    def _cmd_status(self, _a: _Args) -> Any:
        return self.status()

    def _cmd_edges(self, _a: _Args) -> Any:
        now = time.monotonic_ns()
        return [{"edge": str(s.edge), "state": s.state(now),
                 "expires_in": (s.expires_ns - now) / 1e9 if s.expires_ns else None,
                 "idle_timeout": s.idle_ns / 1e9 if s.idle_ns else None}
                for s in self._need_segment().edges()]

    def _cmd_grant(self, a: _Args) -> Any:
        ttl, idle = a.get("ttl", (int, float), None), a.get("idle", (int, float), None)
        edge = self._need_segment().grant(a.get("edge"), ttl, idle)
        self.record([agent_event("grant", edge=str(edge), ttl=ttl, idle=idle)])
        return {"granted": str(edge)}

    def _cmd_revoke(self, a: _Args) -> Any:
        found = self._need_segment().revoke(a.get("edge"))
        self.record([agent_event("revoke", edge=a.get("edge"), found=found)])
        return {"revoked": found}

    def _cmd_quarantine(self, a: _Args, on: bool = True) -> Any:
        self._need_segment().quarantine(on)
        self.record([agent_event(a.cmd, "warning")])
        return self._need_segment().policy()

    def _cmd_release(self, a: _Args) -> Any:
        return self._cmd_quarantine(a, on=False)

    def _exec_monitor(self) -> ExecMonitor:
        if self.execs is None:
            raise ValueError("the exec monitor is not running")
        return self.execs

    def _cmd_deny_exec(self, a: _Args) -> Any:
        self._exec_monitor().deny(a.get("path"))
        self.record([agent_event(a.cmd, path=a.get("path"))])
        return {"denied": self._exec_monitor().denied()}

    def _cmd_allow_exec(self, a: _Args) -> Any:
        self._exec_monitor().allow(a.get("path"))
        self.record([agent_event(a.cmd, path=a.get("path"))])
        return {"denied": self._exec_monitor().denied()}

    def _cmd_events(self, a: _Args) -> Any:
        limit = a.get("limit", int, 100)
        if not 1 <= limit <= 10000:
            raise ValueError("events: limit must be between 1 and 10000")
        after = a.get("after", int, None)
        if after is None:
            after = max(-1, self.spool.next_seq - limit - 1)
        return [{"seq": seq, **json.loads(e.model_dump_json())}
                for seq, e in self.spool.read(after, limit)]

    def status(self) -> dict[str, object]:
        return {"version": __version__, "pid": os.getpid(), "node_id": self.cfg.node_id,
                "uptime_s": round(time.monotonic() - self.started, 1),
                "segment": self.segment.status() if self.segment else None,
                "exec_monitor": self.execs.stats() if self.execs else None,
                "connect_monitor": self.connects.stats() if self.connects else None,
                "spool": self.spool.status(), "watchdog": self.last_reading,
                "controller": self.uplink.last if self.uplink else None}

    # -- periodic work ---------------------------------------------------------------------
    async def _every(self, seconds: float, fn: Any) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), seconds)
            if not self._stop.is_set():
                fn()

    def _sweep(self) -> None:
        if self.segment:
            gone = self.segment.sweep()
            if gone:
                self.record([agent_event("edges_expired", edges=",".join(map(str, gone)))])

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
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        self.record([agent_event("start", version=__version__, pid=os.getpid())])
        for p in self.spool.problems:
            log.error("spool segment set aside: %s (%s)", p.segment, p.reason,
                      extra={"moved_to": p.moved_to})
            self.record([agent_event("spool_corrupt", "critical", segment=p.segment,
                                      reason=p.reason, moved_to=p.moved_to)])
        self._start_segment()
        self._start_monitors()
        for part in (self.segment, self.execs, self.connects):
            if part is not None:
                self._add_reader(part)
        await self._serve()
        self._start_uplink()
        tasks = [asyncio.create_task(self._every(self.cfg.segment.sweep_interval, self._sweep)),
                 asyncio.create_task(self._every(self.cfg.watchdog.interval, self._check_self))]
        if self.uplink:
            tasks.append(asyncio.create_task(self._uplink_loop()))
        ping = watchdog_interval()
        if ping:
            tasks.append(asyncio.create_task(self._every(ping, lambda: notify("WATCHDOG=1"))))
        notify("READY=1")
        notify(f"STATUS=enforcing: segment={'on' if self.segment else 'off'}, "
               f"exec={'on' if self.execs else 'off'}, connect={'on' if self.connects else 'off'}")
        log.info("agent ready", extra={"status": self.status()})
        await self._stop.wait()
        notify("STOPPING=1")
        for t in tasks:
            t.cancel()
        self.shutdown()
        return self._exit

    def shutdown(self) -> None:
        """Close handles; pins and enforcement stay."""
        loop = asyncio.get_running_loop()
        for fd in self._readers:
            loop.remove_reader(fd)
        if self._server:
            self._server.close()
        with contextlib.suppress(FileNotFoundError):
            self.cfg.control.socket.unlink()
        with contextlib.suppress(Exception):
            self.record([agent_event("stop", exit=self._exit)])
        for part in (self.segment, self.execs, self.connects):
            if part is not None:
                part.close()
        self.spool.close()
        log.info("agent stopped; enforcement stays pinned", extra={"exit": self._exit})


def detach(cfg: AgentConfig) -> dict[str, object]:
    """Remove everything the agent attached and pinned (run with the daemon stopped)."""
    done: dict[str, object] = {}
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
