"""The agent's metrics file: written whole by rename, readable by node_exporter's user
whatever the agent's umask, and an unwritable place is reported, not raised."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from aegis_agent.config import ConfigError, parse_config
from aegis_agent.daemon import Agent
from aegis_agent.metrics import AgentMetrics

pytestmark = pytest.mark.unit


def test_written_0644_under_umask_0077_with_no_temporary_left(tmp_path: Path) -> None:
    agent = Agent(parse_config(f"spool: {{dir: {tmp_path / 'spool'}}}"))
    out = tmp_path / "textfile" / "aegis_agent.prom"
    out.parent.mkdir()
    metrics = AgentMetrics(agent, out)
    old = os.umask(0o077)  # the agent's unit sets UMask=0077
    try:
        assert metrics.write() and metrics.write()
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    assert [p.name for p in out.parent.iterdir()] == ["aegis_agent.prom"]
    names = {f.name for f in text_string_to_metric_families(out.read_text())}
    assert {"aegis_agent_events_lost", "aegis_agent_spool_used_bytes"} <= names
    out.unlink()  # the directory gone (root could write into a read-only one)
    out.parent.rmdir()
    assert not metrics.write()
    agent.spool.close()


def test_a_textfile_not_named_prom_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"metrics.textfile.*ends in \.prom"):
        parse_config("metrics: {textfile: /var/lib/prometheus/node-exporter/aegis.txt}")
