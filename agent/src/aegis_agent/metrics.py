"""The agent's Prometheus metrics, written as a file for node_exporter's textfile collector
(config ``metrics.textfile``): no port of its own on the node.

One :class:`~prometheus_client.CollectorRegistry` per process. :class:`AgentCollector`
reads the agent's state at each write: the kernel programs' counters (events sent, lost
because a ring buffer was full, denied; the segment filter's packets per direction and
verdict), the spool, the ring drains the daemon counted, the attach modes; the process
collector adds CPU seconds and resident memory. The file is written to a temporary name
beside it and renamed over it, so the collector never reads half a file.

:data:`METRIC_NAMES` lists every family (the Grafana dashboard's test checks against it).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Info,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from . import __version__
from .bpf.layout import DIRECTIONS
from .bpf.syscall import BpfError

if TYPE_CHECKING:
    from .daemon import Agent

log = logging.getLogger("aegis.agent.metrics")

METRIC_NAMES = frozenset({
    "aegis_agent_build_info", "aegis_agent_events", "aegis_agent_events_lost",
    "aegis_agent_denied", "aegis_agent_segment_events_suppressed",
    "aegis_agent_segment_packets", "aegis_agent_ring_drains", "aegis_agent_ring_records",
    "aegis_agent_spool_used_bytes", "aegis_agent_spool_max_bytes",
    "aegis_agent_spool_high_water_bytes", "aegis_agent_spool_high_water_alarm",
    "aegis_agent_spool_pending_events", "aegis_agent_bpf_attach_info",
    "aegis_agent_process_cpu_seconds", "aegis_agent_process_resident_memory_bytes",
    "aegis_agent_process_virtual_memory_bytes", "aegis_agent_process_start_time_seconds",
    "aegis_agent_process_open_fds", "aegis_agent_process_max_fds",
    "aegis_agent_label_policy_packets", "aegis_agent_label_policy_bytes",
    "aegis_agent_fqdn_learned_addresses", "aegis_agent_dns_answers",
    "aegis_agent_ssh_session_execs_unmatched",
})


class AgentCollector(Collector):
    """The agent's state as metric families, read when the registry is collected."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def collect(self) -> Iterable[Metric]:
        a = self.agent
        events = CounterMetricFamily("aegis_agent_events", "Events the kernel programs "
                                     "emitted into their ring buffer, per source",
                                     labels=["source"])
        lost = CounterMetricFamily("aegis_agent_events_lost", "Events lost, per source: a "
                                   "full ring buffer (exec, connect, segment) or unsent "
                                   "events the spool dropped past its bound (spool)",
                                   labels=["source"])
        denied = CounterMetricFamily("aegis_agent_denied", "Execs killed or refused (exec), "
                                     "connects refused (connect)", labels=["source"])
        for source, counts in self._monitor_stats():
            events.add_metric([source], counts["events"])
            lost.add_metric([source], counts["lost"])
            denied.add_metric([source], counts["denied"])
        segment = self._segment_counters()
        suppressed = CounterMetricFamily("aegis_agent_segment_events_suppressed",
                                         "Drop events the segment filter's rate limit kept "
                                         "out of its ring buffer")
        packets = CounterMetricFamily("aegis_agent_segment_packets", "Packets the segment "
                                      "filter judged, per direction and verdict (would_*: "
                                      "observe mode)", labels=["direction", "verdict"])
        if segment is not None:
            events.add_metric(["segment"], segment["events"]["sent"])
            lost.add_metric(["segment"], segment["events"]["lost"])
            suppressed.add_metric([], segment["events"]["suppressed"])
            for direction in DIRECTIONS:
                for verdict, n in sorted(segment[direction].items()):
                    packets.add_metric([direction, verdict], n)
        lost.add_metric(["spool"], a.spool.dropped)
        yield from (events, lost, denied, suppressed, packets)
        yield from self._label_policies()
        yield from self._fqdn()
        yield from self._rings()
        yield from self._spool()
        unmatched = CounterMetricFamily(
            "aegis_agent_ssh_session_execs_unmatched", "Execs in an SSH session whose sshd "
            "pid sshd's log had not named within ssh_krl.session_wait: not attached to a "
            "grant (0 without ssh_krl.session_log)")
        unmatched.add_metric([], a.ssh_sessions.unmatched if a.ssh_sessions else 0)
        yield unmatched
        attach = GaugeMetricFamily("aegis_agent_bpf_attach_info", "1 for each enforcement "
                                   "component attached, labelled with its attach mode",
                                   labels=["component", "mode"])
        for component, mode in a.attach_modes().items():
            attach.add_metric([component, mode], 1)
        yield attach

    def _monitor_stats(self) -> Iterator[tuple[str, dict[str, int]]]:
        for source, mon in (("exec", self.agent.execs), ("connect", self.agent.connects)):
            if mon is None:
                continue
            try:
                stats = mon.stats()
            except (BpfError, OSError) as e:
                log.warning("metrics: %s monitor counters unreadable: %s", source, e)
                continue
            yield source, {k: int(stats[k]) for k in ("events", "lost", "denied")}  # type: ignore[call-overload]

    def _segment_counters(self) -> dict[str, dict[str, int]] | None:
        if self.agent.segment is None:
            return None
        try:
            return self.agent.segment.counters()
        except (BpfError, OSError) as e:
            log.warning("metrics: segment counters unreadable: %s", e)
            return None

    def _fqdn(self) -> Iterator[Metric]:
        learned = GaugeMetricFamily("aegis_agent_fqdn_learned_addresses", "Addresses (per "
                                    "port) learned from DNS answers for FQDN egress "
                                    "policies, not yet expired")
        answers = CounterMetricFamily("aegis_agent_dns_answers", "DNS answers the agent "
                                      "read for FQDN egress policies, per outcome",
                                      labels=["outcome"])
        if self.agent.segment is not None:
            try:
                learned.add_metric([], self.agent.segment.fqdn.status()["learned"])  # type: ignore[arg-type]
            except (BpfError, OSError) as e:
                log.warning("metrics: learned FQDN addresses unreadable: %s", e)
        if self.agent.learner is not None:
            for outcome, n in sorted(self.agent.learner.counts.items()):
                answers.add_metric([outcome], n)
        yield from (learned, answers)

    def _label_policies(self) -> Iterator[Metric]:
        packets = CounterMetricFamily("aegis_agent_label_policy_packets", "Packets of the "
                                      "controller's label policies, per policy and verdict "
                                      "(observed: would have been dropped, passed in observe "
                                      "mode)", labels=["policy", "verdict"])
        octets = CounterMetricFamily("aegis_agent_label_policy_bytes", "Bytes of the same "
                                     "packets", labels=["policy", "verdict"])
        report: dict[str, dict[str, object]] = {}
        if self.agent.segment is not None:
            try:
                report = self.agent.segment.label_policies.report()
            except (BpfError, OSError) as e:
                log.warning("metrics: label policy counters unreadable: %s", e)
        for name, row in sorted(report.items()):
            for verdict in ("allowed", "dropped", "observed"):
                packets.add_metric([name, verdict], row[f"{verdict}_packets"])  # type: ignore[arg-type]
                octets.add_metric([name, verdict], row[f"{verdict}_bytes"])  # type: ignore[arg-type]
        yield from (packets, octets)

    def _rings(self) -> Iterator[Metric]:
        drains = CounterMetricFamily("aegis_agent_ring_drains", "Batches read from a ring "
                                     "buffer into the spool, per source", labels=["source"])
        records = CounterMetricFamily("aegis_agent_ring_records", "Records read from a ring "
                                      "buffer into the spool, per source", labels=["source"])
        for source in sorted(self.agent.drains):
            drains.add_metric([source], self.agent.drains[source])
            records.add_metric([source], self.agent.drained[source])
        yield from (drains, records)

    def _spool(self) -> Iterator[Metric]:
        spool = self.agent.spool
        for name, doc, value in (
                ("aegis_agent_spool_used_bytes", "Bytes the spool's segments take on disk",
                 spool.used()),
                ("aegis_agent_spool_max_bytes", "The spool's bound: past it the oldest "
                 "segments are dropped", spool.max_bytes),
                ("aegis_agent_spool_high_water_bytes", "Usage at which the spool raises its "
                 "alarm", int(spool.high_water * spool.max_bytes)),
                ("aegis_agent_spool_high_water_alarm", "1 while the spool is above its "
                 "high-water mark", int(spool.alarm)),
                ("aegis_agent_spool_pending_events", "Events spooled and not yet "
                 "acknowledged by the controller", spool.pending())):
            g = GaugeMetricFamily(name, doc)
            g.add_metric([], value)
            yield g


class AgentMetrics:
    """The registry of one agent process, and its textfile."""

    def __init__(self, agent: Agent, textfile: Path) -> None:
        disable_created_metrics()  # no *_created series (the library's switch: per process)
        self.textfile = textfile
        self.registry = CollectorRegistry()
        Info("aegis_agent_build", "Version of the agent", registry=self.registry).info(
            {"version": __version__})
        ProcessCollector(namespace="aegis_agent", registry=self.registry)
        self.registry.register(AgentCollector(agent))
        self._failing: str | None = None

    def write(self) -> bool:
        """Write the textfile (temporary file + rename); a failure is logged once until
        it changes or writing works again. Returns whether it was written."""
        try:
            write_textfile(self.textfile, generate_latest(self.registry))
        except OSError as e:
            problem = f"{self.textfile}: {e.strerror or e}"
            if problem != self._failing:
                log.warning("metrics textfile not written: %s", problem)
                self._failing = problem
            return False
        self._failing = None
        return True


def write_textfile(path: Path, data: bytes) -> None:
    """``data`` to a temporary file beside ``path`` (a name the collector skips: it reads
    ``*.prom`` only), then renamed over it. Mode 0644 whatever the umask (the agent's unit
    has 0077): node_exporter reads it as its own user."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.fchmod(fd, 0o644)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
