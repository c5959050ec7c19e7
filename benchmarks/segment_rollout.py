"""Policy change → enforced on every node of a lab fleet: the ``--fleet N`` round of
``python -m benchmarks.access`` (issue 15, part 8's third figure).

A local fleet of N container nodes (systemd, SSH) with the agent installed by
``aegis.fleet.agent``, enrolled, attested *trusted* against its golden record and
labelled ``role=app``, and a real controller on the fleet bridge's gateway
(``tests/harness_fleet_agents.py``). Each node runs a TCP service on two ports. The label
policy ``mesh: app -> app tcp/P`` allows one of them between every two nodes; each round
switches it to the other port with ``aegis-controller segment policy set`` (the operator's
command, its own process: the controller's long polls find orders another process wrote
within ``order_bell.RECHECK`` seconds), which changes every node's set. Timed from the
command's start:

- **acked**: each node's new ``segment-policy`` order acknowledged ``done`` by its agent
  (the controller's database, read every 5 ms);
- **enforced** (also counted from the command's return: ``..._after_command``): the
  change seen in traffic on each node: a probe inside the next node (its
  own address, a source the policy selects) opens a new TCP connection to the node's newly
  allowed port every 3 ms (SYN timeout 3 ms) from before the command; the first accepted
  one. Nodes share the host's kernel, so the probe's wall clock is the bench's.

A probe that connects before the command (the port was not dropped) fails the bench.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa
import yaml

from .figures import percentile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from harness_fleet_agents import AgentFleet, agent_fleet

from aegis_lab.podman import podman_env

PORTS = (7001, 7002)

_PROBE = """
import socket, sys, time
dst, port, deadline = sys.argv[1], int(sys.argv[2]), time.time() + float(sys.argv[3])
print("ready", flush=True)
while time.time() < deadline:
    s = socket.socket()
    s.settimeout(0.003)
    try:
        s.connect((dst, port))
        print(f"open {time.time()!r}", flush=True)
        break
    except OSError:
        pass
    finally:
        s.close()
else:
    print("none", flush=True)
"""


class BenchFailed(RuntimeError):
    pass


def _policy(port: int) -> str:
    return yaml.safe_dump({"policies": [{"name": "mesh", "from": {"role": "app"},
                                         "to": {"role": "app"}, "ports": [f"tcp/{port}"],
                                         "action": "allow", "mode": "enforce"}]})


def _pushes(engine: sa.Engine) -> dict[str, tuple[str, str]]:
    """node -> (latest segment-policy order, its status)."""
    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT p.node_id, p.order_id, o.status FROM segment_pushes p JOIN orders o "
            "ON o.order_id = p.order_id")).all()
    return {r.node_id: (r.order_id, r.status) for r in rows}


def _watch_acks(engine: sa.Engine, before: dict[str, tuple[str, str]], nodes: list[str],
                acked: dict[str, float], stop: threading.Event) -> None:
    """Record when each node's order newer than ``before`` is ``done``."""
    while not stop.is_set() and len(acked) < len(nodes):
        now = time.time()
        for node, (order, status) in _pushes(engine).items():
            if node not in acked and order != before.get(node, ("", ""))[0]:
                if status == "done":
                    acked[node] = now
                elif status != "pending":
                    raise BenchFailed(f"{node}: segment-policy order {order} {status}")
        time.sleep(0.005)


def _start_probe(lab: AgentFleet, src: str, dst: str, port: int,
                 seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen(
        ["podman", "exec", f"{lab.fleet.prefix}-{src}", "python3", "-c", _PROBE,
         lab.address(dst), str(port), str(seconds)],
        env=podman_env(), stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        raise BenchFailed(f"the probe in {src} did not start")
    return proc


def _set(lab: AgentFleet, port: int, tag: str) -> None:
    path = lab.server.state / f"mesh-{tag}.yml"
    path.write_text(_policy(port))
    lab.ctl("segment", "policy", "set", str(path))


def _round(lab: AgentFleet, engine: sa.Engine, port: int, n: int) -> dict[str, dict]:
    nodes = lab.nodes
    # the probe of node i runs in node i+1: a source the policy selects
    probes = {node: _start_probe(lab, nodes[(i + 1) % len(nodes)], node, port, 30)
              for i, node in enumerate(nodes)}
    before, acked, stop = _pushes(engine), {}, threading.Event()
    failure: list[BaseException] = []

    def watch() -> None:
        try:
            _watch_acks(engine, before, nodes, acked, stop)
        except BaseException as e:  # handed to the main thread
            failure.append(e)
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    start = time.time()
    _set(lab, port, str(n))
    returned = time.time()
    enforced: dict[str, float] = {}
    for node, proc in probes.items():
        out, _ = proc.communicate(timeout=40)
        word, _, when = out.strip().partition(" ")
        if word != "open":
            raise BenchFailed(f"round {n}: {node} never accepted tcp/{port} (probe: {out!r})")
        if float(when) < start:
            raise BenchFailed(f"round {n}: {node} accepted tcp/{port} before the change")
        enforced[node] = float(when)
    watcher.join(timeout=30)
    stop.set()
    if failure:
        raise failure[0]
    if len(acked) < len(nodes):
        raise BenchFailed(f"round {n}: not acknowledged by {sorted(set(nodes) - set(acked))}")
    return {"command_s": returned - start,
            "acked": {k: v - start for k, v in acked.items()},
            "enforced": {k: v - start for k, v in enforced.items()}}


def rollout(size: int, rounds: int, say: Callable[[str], None]
            ) -> tuple[dict[str, float], dict[str, object]]:
    """The fleet round: figures (ms) and notes."""
    prefix = f"ar{secrets.token_hex(2)}"
    labels = {f"node{i + 1}": {"role": "app"} for i in range(size)}
    load_before = os.getloadavg()
    with agent_fleet(prefix, labels, say=say) as lab:
        for node in lab.nodes:
            for port in PORTS:
                lab.listen(node, port)
        engine = sa.create_engine(f"sqlite:///{lab.server.state / 'controller.db'}")
        modes = {n: lab.agent_status(n)["segment"]["xdp_mode"] for n in lab.nodes}
        say(f"fleet of {size} trusted; warm-up policy tcp/{PORTS[0]}")
        _round(lab, engine, PORTS[0], 0)
        results = []
        load_start = os.getloadavg()
        for n in range(1, rounds + 1):
            results.append(_round(lab, engine, PORTS[n % 2], n))
            r = results[-1]
            say(f"round {n}/{rounds}: all acked {max(r['acked'].values()) * 1000:.0f} ms, "
                f"all enforced {max(r['enforced'].values()) * 1000:.0f} ms")
        load_end = os.getloadavg()
        engine.dispose()
    figures: dict[str, float] = {}

    def put(name: str, values: list[float]) -> None:
        figures[f"{name}_p50_ms"] = round(percentile(values, 0.5) * 1000, 1)
        figures[f"{name}_max_ms"] = round(max(values) * 1000, 1)
    put("rollout_set_command", [r["command_s"] for r in results])
    for node in sorted(labels):
        put(f"rollout_{node}_acked", [r["acked"][node] for r in results])
        put(f"rollout_{node}_enforced", [r["enforced"][node] for r in results])
    put("rollout_all_acked", [max(r["acked"].values()) for r in results])
    put("rollout_all_enforced", [max(r["enforced"].values()) for r in results])
    # the part after the command returned: the orders found by serve and run by the agents
    put("rollout_all_enforced_after_command",
        [max(r["enforced"].values()) - r["command_s"] for r in results])
    notes = {"rollout_nodes": size, "rollout_rounds": rounds,
             "rollout_xdp_modes": " ".join(f"{k}=xdp/{v}" for k, v in sorted(modes.items())),
             "rollout_load_average": " → ".join(
                 " ".join(f"{x:.2f}" for x in load)
                 for load in (load_before, load_start, load_end)),
             "rollout_change": "aegis-controller segment policy set (its own process; "
                               "serve re-reads another process's orders every 2 s)"}
    return figures, notes
