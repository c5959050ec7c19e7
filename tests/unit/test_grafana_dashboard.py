"""The Grafana dashboard (contrib/grafana/aegis.json) is an importable dashboard whose
queries use only the metric series the controller and the agent really expose (taken
from their registries, written the way each process writes them), and that shows each
of them; the example Prometheus scrape config is valid YAML with both jobs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from harness_domain import make_controller
from prometheus_client.parser import text_string_to_metric_families

from aegis_agent.config import parse_config
from aegis_agent.daemon import Agent
from aegis_agent.metrics import AgentMetrics
from aegis_controller.metrics import ControllerMetrics

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "contrib" / "grafana" / "aegis.json"
SCRAPE = REPO / "contrib" / "prometheus" / "aegis.yml"
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
            "summary": ("_sum", "_count")}


def _series(text: str) -> tuple[set[str], set[str]]:
    """(the series names a scrape of ``text`` can hold, its family names)."""
    series, families = set(), set()
    for family in text_string_to_metric_families(text):
        families.add(family.name)
        series |= {family.name + s for s in SUFFIXES.get(family.type, ("",))}
    return series, families


@pytest.fixture(scope="module")
def exposed(tmp_path_factory: pytest.TempPathFactory) -> tuple[set[str], set[str]]:
    tmp = tmp_path_factory.mktemp("dash")
    controller = make_controller(tmp / "controller")
    body, _ = ControllerMetrics(controller.engine).exposition()
    agent = Agent(parse_config(f"spool: {{dir: {tmp / 'spool'}}}"))
    textfile = tmp / "aegis_agent.prom"
    assert AgentMetrics(agent, textfile).write()
    agent.spool.close()
    c_series, c_families = _series(body.decode())
    a_series, a_families = _series(textfile.read_text())
    return c_series | a_series, c_families | a_families


def _exprs(node: object) -> list[str]:
    if isinstance(node, dict):
        found = [node["expr"]] if isinstance(node.get("expr"), str) else []
        query = node.get("query")
        if isinstance(query, dict) and isinstance(query.get("query"), str):
            found.append(query["query"])
        return found + [e for v in node.values() for e in _exprs(v)]
    if isinstance(node, list):
        return [e for v in node for e in _exprs(v)]
    return []


def test_the_dashboard_is_importable() -> None:
    doc = json.loads(DASHBOARD.read_text())
    assert doc["uid"] and doc["title"] and isinstance(doc["schemaVersion"], int)
    assert doc["id"] is None  # a new dashboard on import, not one of the exporting Grafana
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in doc["panels"]:
        assert {"x", "y", "w", "h"} <= p["gridPos"].keys() and p["gridPos"]["x"] + \
            p["gridPos"]["w"] <= 24, p["title"]
        if p["type"] == "row":
            continue
        assert p["type"] in ("timeseries", "stat", "table"), p["title"]
        assert p["targets"] and all(t["expr"] and t["refId"] for t in p["targets"]), p["title"]
        assert p["datasource"]["uid"] == "${datasource}"
    names = {v["name"] for v in doc["templating"]["list"]}
    used = set(re.findall(r"\$\{?(\w+)", json.dumps(doc))) - {"__rate_interval"}
    assert used <= names, f"undefined dashboard variables: {used - names}"


def test_every_metric_the_dashboard_queries_is_exposed(exposed) -> None:
    series, families = exposed
    queried = {m for e in _exprs(json.loads(DASHBOARD.read_text()))
               for m in re.findall(r"\baegis_[a-z0-9_]+", e)}
    assert queried, "no aegis_ metric in the dashboard"
    assert queried <= series, f"not exposed by the code: {sorted(queried - series)}"
    # and each family is on the dashboard (the process collector's extras aside)
    shown = {f for f in families if any(q == f or q.startswith(f + "_") for q in queried)}
    extras = {f for f in families if "_process_" in f and not f.endswith(
        ("cpu_seconds", "resident_memory_bytes"))}
    assert families - extras - shown == set()


def test_the_scrape_config_names_both_jobs() -> None:
    doc = yaml.safe_load(SCRAPE.read_text())
    jobs = {j["job_name"]: j for j in doc["scrape_configs"]}
    assert set(jobs) == {"aegis-controller", "aegis-nodes"}
    ctl = jobs["aegis-controller"]
    assert ctl["scheme"] == "https" and ctl["metrics_path"] == "/metrics"
    assert {"ca_file", "cert_file", "key_file"} <= ctl["tls_config"].keys()
