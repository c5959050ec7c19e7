"""The controller's Prometheus metrics, served as text on ``GET /metrics`` (operator client
certificate, like every operator route: see the README's *Metrics* section).

One :class:`~prometheus_client.CollectorRegistry` per process (never the library's global
one). What lives in the database — nodes per trust state, orders, incidents, recovery jobs
and their durations, ledger records — is read at scrape time by :class:`StateCollector`,
so it is right whichever process changed it (CLI, recovery engine, another controller on
the same PostgreSQL). What happens only in this process is counted here: events ingested,
lost events reported by agents, API requests and their latency, ledger verifications.

Names follow Prometheus's conventions: ``aegis_`` prefix, base units (seconds), ``_total``
for counters, ``_info`` for build metadata. :data:`METRIC_NAMES` lists every family this
module exposes (the Grafana dashboard's test checks its queries against it).
"""

from __future__ import annotations

import logging
import platform
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import sqlalchemy as sa
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from aegis_protocol.events import EventBatchAck

from . import __version__, db, tables
from .ledger import Ledger
from .ledger.store import records_table
from .nodes import NodeState
from .recovery.states import TERMINAL, JobState

log = logging.getLogger(__name__)

#: Buckets (seconds) of a recovery job's duration: from its flagging to its end.
JOB_BUCKETS = (30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0, 14400.0)
#: Buckets (seconds) of one whole-ledger verification.
VERIFY_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0)
#: Buckets (seconds) of one API request, from its first byte in to its last byte out.
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Methods a request is labelled with; any other is ``other`` (a client picks the method:
#: label values must stay bounded).
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

#: Every metric family the controller exposes (as named in the text format; counters
#: without their ``_total``, histograms without ``_bucket``/``_sum``/``_count``).
METRIC_NAMES = frozenset({
    "aegis_controller_build_info", "aegis_controller_database_up", "aegis_nodes",
    "aegis_orders", "aegis_incidents", "aegis_recovery_jobs",
    "aegis_recovery_job_duration_seconds", "aegis_ledger_records", "aegis_events_ingested",
    "aegis_events_lost_reported", "aegis_http_request_duration_seconds",
    "aegis_ledger_verify_duration_seconds", "aegis_ledger_verify_ok",
    "aegis_ledger_last_verify_timestamp_seconds", "aegis_controller_process_cpu_seconds",
    "aegis_controller_process_resident_memory_bytes",
    "aegis_controller_process_virtual_memory_bytes",
    "aegis_controller_process_start_time_seconds", "aegis_controller_process_open_fds",
    "aegis_controller_process_max_fds", "aegis_access_requests", "aegis_grants",
})
#: Statuses of an access request (access.store), every one exposed even at 0
REQUEST_STATUSES = ("pending", "granted", "denied", "expired", "revoked")
#: A granted edge on one node, by how it stands or ended: ``live`` (open), ``expired``
#: (its time ran out), ``idle_revoked`` (the agent saw no packet for the idle timeout),
#: ``revoked`` (by a user, an operator or the node leaving trusted)
GRANT_STATES = {"active": "live", "expired": "expired", "idle": "idle_revoked",
                "revoked": "revoked"}


class StateCollector(Collector):
    """Families read from the database at each scrape."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily("aegis_controller_database_up",
                               "1 when this scrape could read the controller's database")
        try:
            families = list(self._read())
        except (sa.exc.SQLAlchemyError, db.DatabaseError) as e:
            log.warning("metrics: database not readable", extra={"error": str(e)[:300]})
            up.add_metric([], 0)
            return [up]
        up.add_metric([], 1)
        return [up, *families]

    def _read(self) -> Iterator[Metric]:
        n, o, i, j = (tables.nodes.c, tables.orders.c, tables.incidents.c,
                      tables.recovery_jobs.c)
        ar, ae = tables.access_requests.c, tables.access_edges.c
        count = sa.func.count()
        with db.errors(self.engine), db.reader(self.engine) as conn:
            nodes = dict(conn.execute(sa.select(n.state, count).group_by(n.state)).all())
            orders = conn.execute(sa.select(o.kind, o.status, count)
                                  .group_by(o.kind, o.status)).all()
            incidents = conn.execute(sa.select(i.rule, i.severity, count)
                                     .group_by(i.rule, i.severity)).all()
            jobs = dict(conn.execute(sa.select(j.state, count).group_by(j.state)).all())
            ended = conn.execute(sa.select(j.state, j.ended_at - j.flagged_at).where(
                j.state.in_([str(s) for s in TERMINAL]), j.ended_at.is_not(None))).all()
            records = conn.execute(sa.select(sa.func.count()).select_from(records_table)
                                   ).scalar_one()
            requests = dict(conn.execute(sa.select(ar.status, count).group_by(ar.status)).all())
            edges = dict(conn.execute(sa.select(ae.status, count).group_by(ae.status)).all())

        yield _by_state("aegis_nodes", "Nodes per trust state", "state",
                        {s.value: s.value for s in NodeState}, nodes)

        g = GaugeMetricFamily("aegis_orders", "Signed orders on record per kind and status "
                              "(pending, done, failed, expired...)", labels=["kind", "status"])
        for kind, status, value in sorted(orders):
            g.add_metric([kind, status], value)
        yield g

        c = CounterMetricFamily("aegis_incidents", "Incidents raised per rule and severity",
                                labels=["rule", "severity"])
        for rule, severity, value in sorted(incidents):
            c.add_metric([rule, severity], value)
        yield c

        yield _by_state("aegis_recovery_jobs", "Recovery jobs per state", "state",
                        {s.value: s.value for s in JobState}, jobs)

        yield _job_durations(ended)

        g = GaugeMetricFamily("aegis_ledger_records", "Records in the audit ledger")
        g.add_metric([], records)
        yield g

        yield _by_state("aegis_access_requests", "Just-in-time access requests per status",
                        "status", {s: s for s in REQUEST_STATUSES}, requests)
        yield _by_state("aegis_grants", "Granted edges (one per node of a grant) per state: "
                        "live, expired, idle_revoked, revoked", "state", GRANT_STATES, edges)


def _by_state(name: str, doc: str, label: str, known: dict[str, str],
              counts: dict[str, int]) -> GaugeMetricFamily:
    """A gauge per state: every ``known`` one (stored value -> exposed name) even at 0,
    then any other stored value as it is (written by a newer version)."""
    g = GaugeMetricFamily(name, doc, labels=[label])
    for stored, shown in known.items():
        g.add_metric([shown], counts.pop(stored, 0))
    for stored, value in sorted(counts.items()):
        g.add_metric([stored], value)
    return g


def _job_durations(ended: Iterable[tuple[str, float]]) -> HistogramMetricFamily:
    """Finished jobs' durations (flagged to ended, seconds) per outcome, as a histogram."""
    h = HistogramMetricFamily("aegis_recovery_job_duration_seconds",
                              "Finished recovery jobs: seconds from flagging to the end, per "
                              "outcome (trusted, failed)", labels=["outcome"])
    by_outcome: dict[str, list[float]] = {str(s): [] for s in sorted(TERMINAL)}
    for state, seconds in ended:
        by_outcome.setdefault(state, []).append(max(0.0, float(seconds or 0.0)))
    for outcome, values in by_outcome.items():
        buckets = [(_le(b), sum(1 for v in values if v <= b)) for b in JOB_BUCKETS]
        buckets.append(("+Inf", len(values)))
        h.add_metric([outcome], buckets, sum_value=sum(values))
    return h


def _le(bound: float) -> str:
    return repr(float(bound))


class ControllerMetrics:
    """This process's registry and the in-process instruments."""

    def __init__(self, engine: sa.Engine) -> None:
        # no ``*_created`` series beside each counter and histogram: a second gauge per
        # family that Prometheus ingests as such (the library's switch is per process)
        disable_created_metrics()
        # not auto_describe: registering StateCollector must not read the database
        self.registry = CollectorRegistry()
        reg = self.registry
        Info("aegis_controller_build", "Version of the controller", registry=reg).info(
            {"version": __version__, "python": platform.python_version()})
        ProcessCollector(namespace="aegis_controller", registry=reg)
        reg.register(StateCollector(engine))
        self.events = Counter("aegis_events_ingested", "Events received from agents, by "
                              "result (stored: new; duplicate: already held)",
                              ["result"], registry=reg)
        for result in ("stored", "duplicate"):
            self.events.labels(result)
        self.lost = Counter("aegis_events_lost_reported", "Events agents reported lost in "
                            "their heartbeats, per source", ["source"], registry=reg)
        self.requests = Histogram("aegis_http_request_duration_seconds",
                                  "API requests: seconds to answer, per route template, "
                                  "method and status class", ["route", "method", "status"],
                                  buckets=REQUEST_BUCKETS, registry=reg)
        self.verify_seconds = Histogram("aegis_ledger_verify_duration_seconds",
                                        "Seconds one whole-ledger verification took",
                                        buckets=VERIFY_BUCKETS, registry=reg)
        self.verify_ok = Gauge("aegis_ledger_verify_ok", "1 when the last ledger "
                               "verification found the ledger intact, 0 when not",
                               registry=reg)
        self.verified_at = Gauge("aegis_ledger_last_verify_timestamp_seconds",
                                 "Unix time of the last ledger verification", registry=reg)

    # -- what the API tells it ----------------------------------------------------------
    def ingested(self, ack: EventBatchAck) -> None:
        self.events.labels("stored").inc(ack.stored)
        self.events.labels("duplicate").inc(ack.duplicates)

    def lost_reported(self, lost: dict[str, int]) -> None:
        for source, value in lost.items():
            if value:
                self.lost.labels(source).inc(value)

    def verify(self, ledger: Ledger) -> bool:
        """Verify the whole ledger, timed; returns whether it is intact."""
        started = time.perf_counter()
        result = ledger.verify()
        self.verify_seconds.observe(time.perf_counter() - started)
        self.verify_ok.set(1 if result.ok else 0)
        self.verified_at.set(time.time())
        if not result.ok:
            log.error("ledger verification failed", extra={"result": result.to_dict()})
        return result.ok

    def exposition(self) -> tuple[bytes, str]:
        """The registry in the Prometheus text format, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def verify_periodically(metrics: ControllerMetrics, ledger: Ledger, interval: float,
                        stop: threading.Event) -> None:
    """Verify the ledger every ``interval`` seconds until ``stop`` is set (the server's
    thread); a failed verification is logged and shown by ``aegis_ledger_verify_ok``."""
    while not stop.wait(interval):
        try:
            metrics.verify(ledger)
        except Exception:
            log.exception("ledger verification could not run")


class RequestTimer:
    """ASGI middleware: each HTTP request's duration into ``aegis_http_request_duration_
    seconds``, labelled with the route's template (``/v1/orders/{order_id}/ack``, never
    the concrete path: bounded label values) or ``unmatched``, and the status class."""

    def __init__(self, app: Any, metrics: ControllerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.requests.labels(route, method if method in METHODS else "other",
                                         f"{status // 100}xx").observe(
                time.perf_counter() - started)
