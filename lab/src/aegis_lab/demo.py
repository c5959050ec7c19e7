"""The main job: bring up a local fleet, reach it with Ansible, harden it, install and enroll
the agent until every node is trusted by the controller, report, tear down."""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from aegis_controller.playbook import PlayResult, Progress
from aegis_controller.terraform import TerraformEvent

from . import cleanup
from . import controller as lab_controller
from .fleet import LocalFleet
from .naming import check_size
from .paths import Paths
from .playbook import ansible_playbook, ansible_results
from .podman import podman
from .wheels import build_agent_wheels


def _say(msg: str) -> None:
    print(f"[aegis demo] {msg}", flush=True)


def _show(line: str) -> None:
    print(f"  {line}", flush=True)


def _progress(event: TerraformEvent) -> None:
    if event.type in ("apply_complete", "apply_errored", "provision_errored"):
        _say(f"  terraform: {event.message}")


def _recap(play: PlayResult) -> None:
    """The play recap from the runner's stats, and each failed task."""
    for host, st in sorted(play.stats.items()):
        print(f"  {host:<10} ok={st.ok} changed={st.changed} failed={st.failures} "
              f"unreachable={st.unreachable} skipped={st.skipped}")
    for failure in play.failures:
        print(f"  FAILED {failure.host}: {failure.task}: {failure.message}")
    if not play.ok and not play.failures:
        print(f"  the play did not run ({play.status}, rc {play.rc}):\n{play.tail()}")


def run_demo(paths: Paths, nodes: object = 3, keep: bool = False, prefix: str = "aegis") -> int:
    size = check_size(nodes)
    fleet = LocalFleet(prefix, paths, on_event=_progress)
    started = time.monotonic()
    rc = 0
    try:
        _say(f"bringing up {size} nodes (fleet prefix '{prefix}') with Terraform")
        info = fleet.up(size=size, caps="agent")  # the demo hardens and runs the agent
        _say(f"fleet up on bridge {info['bridge']} ({info['network']})")

        _say("first Ansible contact: ansible -m ansible.builtin.ping")
        t0 = time.monotonic()
        ping = ansible_results(fleet, "aegis_fleet", "ansible.builtin.ping")
        fleet.timings.record("first_contact", time.monotonic() - t0)
        for name, result in sorted(ping.items()):
            print(f"  {name}: {result.get('ping') or result.get('msg', 'no answer')}")
        if sorted(n for n, r in ping.items() if r.get("ping") == "pong") != sorted(info["nodes"]):
            _say("Ansible could not reach every node")
            return 1

        harden = paths.playbooks / "harden.yml"
        if harden.exists():
            _say("hardening play: playbooks/harden.yml")
            t0 = time.monotonic()
            play = ansible_playbook(fleet, harden, on_event=Progress("harden", _show))
            fleet.timings.record("harden", time.monotonic() - t0)
            _recap(play)
            rc = 0 if play.ok else 1
        else:
            _say("hardening play: not part of the collection yet (playbooks/harden.yml)")

        if rc == 0:
            rc = _agents(fleet, info)

        _say("inventory (aegis.fleet.fleet plugin):")
        for name, node in sorted(info["nodes"].items()):
            print(f"  {name:<10} {node['address']:<15} {node['mac']}  "
                  f"container={node['container']}")
        _say(f"inventory source: {fleet.inventory_file}")
    finally:
        if keep:
            _say(f"keeping the fleet; tear down with: aegis-lab fleet down --prefix {prefix}")
        else:
            lab_controller.down(fleet)
            _say("destroying the fleet")
            cleanup.down(fleet)
        _say("timings (seconds): " + ", ".join(f"{k}={v}" for k, v in fleet.timings.steps.items())
             + f", total={time.monotonic() - started:.1f}")
    return rc


def _agents(fleet: LocalFleet, info: dict) -> int:
    """Controller on the bridge, the agent role on every node (one-time tokens), expected
    profiles from each node's golden record with its BPF programs pinned; every node
    must end up trusted."""
    _say("controller: aegis-controller serve on the fleet bridge (mutual TLS)")
    ctl = lab_controller.up(fleet)
    base = lab_controller.controller_command(fleet)

    def controller(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*base, *args], capture_output=True, text=True, timeout=120,
                              check=False)

    _say("agent: wheelhouse for offline install (aegis-lab wheels)")
    build_agent_wheels(fleet.paths)
    nodes = sorted(info["nodes"])
    gw = info["gateway"]
    # The play issues each node's one-time token itself, through a pipe from
    # `aegis-controller token issue` and only for nodes not enrolled yet: the tokens exist
    # in the play's memory and on the node's tmpfs only, never in a file (ansible-runner
    # writes extra vars and the environment it is given into its run directory).
    extra = {"agent_controller_url": ctl["url"],
             "agent_controller_ca": Path(ctl["ca_file"]).read_text(),
             "agent_bootstrap_token_command": shlex.join([*base, "token", "issue", "--no-wrap"]),
             "agent_segment_interface": "eth0",
             "agent_edges": [f"{gw} -> any tcp/22"],
             "agent_management_peers": [f"{gw} tcp/22", f"{gw} tcp/{ctl['port']}"],
             "agent_interval": 2}
    _say("agent play: playbooks/agent.yml (aegis.fleet.agent: install, enroll)")
    t0 = time.monotonic()
    play = ansible_playbook(fleet, fleet.paths.playbooks / "agent.yml", extravars=extra,
                            on_event=Progress("agent", _show))
    fleet.timings.record("agent", time.monotonic() - t0)
    _recap(play)
    if not play.ok:
        return 1
    t0 = time.monotonic()
    for name in nodes:
        golden = Path(ctl["state_dir"]) / f"golden-{name}.json"
        golden.write_text(podman("exec", f"{fleet.prefix}-{name}", "cat",
                                 "/var/lib/aegis/golden.json").stdout)
        _wait(lambda n=name: _node(controller, n).get("measurement") is not None, 60)
        out = controller("profile", "set", name, str(golden), "--pin-bpf")
        if out.returncode:
            _say(f"profile set {name} failed: {out.stderr.strip()}")
            return 1
    _wait(lambda: all(_node(controller, n).get("state") == "trusted" for n in nodes), 90)
    fleet.timings.record("attest_trusted", time.monotonic() - t0)
    _say("nodes (aegis-controller nodes):")
    states = {}
    for name in nodes:
        node = _node(controller, name)
        states[name] = node.get("state")
        print(f"  {name:<10} {node.get('state', '?'):<10} {node.get('reason', '')}")
    verify = controller("ledger", "verify")
    print(f"  ledger: {verify.stdout.strip().splitlines()[-1] if verify.stdout else '?'}")
    return 0 if set(states.values()) == {"trusted"} and verify.returncode == 0 else 1


def _node(controller: Callable[..., subprocess.CompletedProcess], name: str) -> dict:
    out = controller("node", "show", name)
    return json.loads(out.stdout) if out.returncode == 0 and out.stdout else {}


def _wait(pred: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(1)
    return False
