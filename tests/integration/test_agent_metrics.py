"""The agent's metrics textfile, written by the real daemon (segment filter and monitors
on the real kernel) and parsed with prometheus_client's parser; and events really lost
(the exec ring buffer overflows while the agent is stopped) reaching a real controller
in the next heartbeat, which makes the node suspect with that reason."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from harness_prometheus import Samples, parse, value
from test_agent_controller import _connect, server  # noqa: F401
from test_agent_daemon import Daemon, daemon  # noqa: F401

from aegis_agent.metrics import METRIC_NAMES
from harness import wait_until
from harness_controller import Server

pytestmark = pytest.mark.integration

def _with_metrics(daemon: Daemon) -> Path:  # noqa: F811
    textfile = daemon.root / "textfile" / "aegis_agent.prom"
    textfile.parent.mkdir()
    cfg = yaml.safe_load(daemon.config.read_text())
    cfg["metrics"] = {"textfile": str(textfile), "interval": 0.2}
    daemon.config.write_text(yaml.safe_dump(cfg))
    return textfile


def read(textfile: Path) -> tuple[Samples, set[str]]:
    return parse(textfile.read_text())


def _execs(n: int) -> None:
    """``n`` execs of /bin/true from one shell loop (a ring record each)."""
    subprocess.run(["sh", "-c", f"i=0; while [ $i -lt {n} ]; do /bin/true; i=$((i+1)); done"],
                   check=True, timeout=300)


@pytest.fixture
def metered(daemon: Daemon) -> Iterator[tuple[Daemon, Path]]:  # noqa: F811
    yield daemon, _with_metrics(daemon)


def test_the_daemon_writes_its_metrics_for_the_textfile_collector(metered) -> None:
    agent, textfile = metered
    agent.start()
    assert wait_until(textfile.exists, 10)
    first, families = read(textfile)
    assert families == METRIC_NAMES
    _execs(20)

    def seen() -> Samples | None:
        samples, _ = read(textfile)
        return samples if value(samples, "aegis_agent_ring_records_total",
                                source="exec") >= value(first, "aegis_agent_ring_records_total",
                                                        source="exec") + 20 else None

    assert wait_until(seen, 20)
    samples = seen()
    assert samples is not None
    assert value(samples, "aegis_agent_events_total", source="exec") >= 20
    assert value(samples, "aegis_agent_ring_drains_total", source="exec") >= 1
    assert value(samples, "aegis_agent_events_lost_total", source="exec") == 0
    assert value(samples, "aegis_agent_events_lost_total", source="spool") == 0
    modes = {dict(k[1])["component"]: dict(k[1])["mode"] for k in samples
             if k[0] == "aegis_agent_bpf_attach_info"}
    assert set(modes) == {"segment", "exec", "connect"}
    assert modes["exec"] in ("lsm", "sigkill") and modes["connect"] == "cgroup"
    assert modes["segment"].startswith("xdp/")
    assert value(samples, "aegis_agent_spool_used_bytes") > 0
    assert value(samples, "aegis_agent_spool_max_bytes") == 64 * 1024 * 1024
    assert value(samples, "aegis_agent_spool_high_water_bytes") == int(0.8 * 64 * 1024 * 1024)
    assert value(samples, "aegis_agent_spool_high_water_alarm") == 0
    assert value(samples, "aegis_agent_process_resident_memory_bytes") > 0
    assert value(samples, "aegis_agent_process_cpu_seconds_total") > 0
    assert any(k[0] == "aegis_agent_segment_packets_total" for k in samples)
    # written by rename: no temporary file left beside it for the collector to trip on
    assert agent.stop() == 0
    assert [p.name for p in textfile.parent.iterdir()] == ["aegis_agent.prom"]


def test_a_textfile_that_cannot_be_written_is_said_once_and_the_agent_runs_on(
        metered) -> None:
    agent, textfile = metered
    textfile.parent.rmdir()  # nowhere to write
    agent.start()
    assert agent.cli("status")[0] == 0
    assert agent.stop() == 0
    log = agent.log[-1].read_text()
    assert log.count("metrics textfile not written") == 1, log
    assert str(textfile) in log


def test_lost_exec_events_make_the_node_suspect(metered, server: Server) -> None:  # noqa: F811
    agent, textfile = metered
    node_id, _token = _connect(agent, server, interval=0.5)

    def state() -> dict:
        out = server.ctl("node", "show", node_id)
        return json.loads(out.stdout) if out.returncode == 0 else {}

    assert wait_until(lambda: state().get("state") == "enrolled"
                      and state().get("heartbeat_at"), 30)
    assert agent.proc is not None
    # stopped, the agent drains nothing: 1 MiB of exec ring holds about 3,200 records
    os.kill(agent.proc.pid, signal.SIGSTOP)
    try:
        _execs(6000)
    finally:
        os.kill(agent.proc.pid, signal.SIGCONT)

    def lost() -> float:
        return value(read(textfile)[0], "aegis_agent_events_lost_total", source="exec")

    assert wait_until(lambda: lost() > 100, 30)
    assert wait_until(lambda: state().get("state") == "suspect", 30), state()
    reason = state()["reason"]
    assert reason.startswith("events lost: ") and "exec " in reason, reason
    assert reason.endswith("threshold 100)")
    # reported once: the count the controller was told is kept for the next heartbeat
    told = json.loads((agent.root / "agent-state" / "lost-reported.json").read_text())
    assert told["exec"] >= 100
