"""The main job: bring up a local fleet, reach it with Ansible, report, tear down."""

from __future__ import annotations

import time

from ..terraform import TerraformEvent
from .fleet import REPO_ROOT, LocalFleet
from .naming import check_size
from .playbook import ansible_playbook, ansible_results


def _say(msg: str) -> None:
    print(f"[aegis demo] {msg}", flush=True)


def _progress(event: TerraformEvent) -> None:
    if event.type in ("apply_complete", "apply_errored", "provision_errored"):
        _say(f"  terraform: {event.message}")


def run_demo(nodes: object = 3, keep: bool = False, prefix: str = "aegis") -> int:
    size = check_size(nodes)
    fleet = LocalFleet(prefix, on_event=_progress)
    started = time.monotonic()
    rc = 0
    try:
        _say(f"bringing up {size} nodes (fleet prefix '{prefix}') with Terraform")
        info = fleet.up(size=size)
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

        harden = REPO_ROOT / "playbooks" / "harden.yml"
        if harden.exists():
            _say("hardening play: playbooks/harden.yml")
            t0 = time.monotonic()
            play = ansible_playbook(fleet, harden)
            fleet.timings.record("harden", time.monotonic() - t0)
            print(play.stdout[-3000:], end="")
            rc = 0 if play.returncode == 0 else 1
        else:
            _say("hardening play: not part of the collection yet (playbooks/harden.yml)")

        _say("inventory (aegis.fleet.fleet plugin):")
        for name, node in sorted(info["nodes"].items()):
            print(f"  {name:<10} {node['address']:<15} {node['mac']}  "
                  f"container={node['container']}")
        _say(f"inventory source: {fleet.inventory_file}")
    finally:
        if keep:
            _say(f"keeping the fleet; tear down with: aegis-lab fleet down --prefix {prefix}")
        else:
            _say("destroying the fleet")
            fleet.down()
        _say("timings (seconds): " + ", ".join(f"{k}={v}" for k, v in fleet.timings.steps.items())
             + f", total={time.monotonic() - started:.1f}")
    return rc
