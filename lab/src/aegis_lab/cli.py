"""``aegis-lab``: the local lab fleet from the command line.

Terraform's local-exec provisioners call ``node``/``bridge``; people and tests call
``fleet``, ``demo``, ``leftovers`` and ``cleanup``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys

from .. import logs
from ..terraform import TerraformFailure
from .naming import LabInputError, check_prefix


def _spec_from(args: argparse.Namespace):
    from .node import NodeSpec

    raw = os.environ.get(args.spec_env, "") if args.spec_env else args.spec_json
    if not raw:
        raise LabInputError("no node spec: pass --spec-json JSON or --spec-env VARIABLE")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise LabInputError(f"node spec is not valid JSON: {exc}") from None
    data.pop("lab_cli", None)
    try:
        return NodeSpec(**data)
    except TypeError as exc:
        raise LabInputError(f"node spec has wrong fields: {exc}") from None


def cmd_node(args: argparse.Namespace) -> int:
    from . import node

    spec = _spec_from(args)
    if args.action == "create":
        facts = node.create(spec)
        print(json.dumps(facts))
    else:
        node.destroy(spec)
    return 0


def cmd_bridge(args: argparse.Namespace) -> int:
    from . import network
    from .naming import FleetNetwork

    if args.action == "up":
        if not args.network:
            raise LabInputError("bridge up needs --network CIDR (a private /24)")
        print(network.bridge_up(args.prefix, FleetNetwork(args.network)))
    else:
        network.bridge_down(args.prefix)
    return 0


def cmd_image(args: argparse.Namespace) -> int:
    from .image import ensure_image

    img = ensure_image(progress=lambda msg: print(f"aegis-lab: {msg}", file=sys.stderr))
    print(json.dumps({"ref": img.ref, "tarball": str(img.tarball), "built": img.built,
                      "imported": img.imported, "seconds": round(img.seconds, 2)}))
    return 0


def cmd_fleet(args: argparse.Namespace) -> int:
    from .fleet import LocalFleet

    fleet = LocalFleet(args.prefix)
    if args.action == "up":
        names = [n for n in (args.names or "").split(",") if n] or None
        info = fleet.up(size=args.size, names=names)
        print(json.dumps({"fleet": info, "inventory": str(fleet.inventory_file),
                          "timings": fleet.timings.steps}, indent=2))
    elif args.action == "replace":
        if not args.node:
            raise LabInputError("fleet replace needs the node name, e.g. `--node node1`")
        info = fleet.replace(args.node)
        print(json.dumps({"fleet": info, "timings": fleet.timings.steps}, indent=2))
    elif args.action == "down":
        fleet.down()
        print(json.dumps({"timings": fleet.timings.steps}))
    else:
        print(json.dumps({"fleet": fleet.info(), "inventory": str(fleet.inventory_file)},
                         indent=2))
    return 0


def cmd_leftovers(args: argparse.Namespace) -> int:
    from .fleet import leftovers

    found = leftovers(args.prefix)
    for item in found:
        print(item)
    return 1 if found else 0


def cmd_cleanup(args: argparse.Namespace) -> int:
    from .fleet import LocalFleet, leftovers, state_root, sweep

    prefixes = [args.prefix] if args.prefix else []
    if args.all:
        fleets = state_root() / "fleets"
        prefixes += [p.name for p in fleets.iterdir()] if fleets.is_dir() else []
    if not prefixes:
        raise LabInputError("cleanup needs --prefix PREFIX or --all")
    rc = 0
    for prefix in sorted(set(prefixes)):
        try:
            LocalFleet(prefix).down()
        except (TerraformFailure, LabInputError) as exc:
            print(f"aegis-lab: terraform destroy of {prefix} failed ({exc}); sweeping",
                  file=sys.stderr)
            sweep(prefix)
        left = leftovers(prefix)
        for item in left:
            print(f"{prefix}: still present: {item}")
        rc |= 1 if left else 0
    return rc


def cmd_env(args: argparse.Namespace) -> int:
    from .fleet import LocalFleet
    from .playbook import ansible_env

    env = ansible_env(LocalFleet(args.prefix) if args.prefix else None)
    for key in sorted(env):
        if key.startswith(("ANSIBLE_", "CONTAINERS_", "AEGIS_", "TF_")) or key in (
                "PATH", "CHECKPOINT_DISABLE"):
            print(f"export {key}={shlex.quote(env[key])}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(nodes=args.nodes, keep=args.keep, prefix=args.prefix)


def cmd_vm(args: argparse.Namespace) -> int:
    from .vm import VmNode

    vm = VmNode(args.prefix, args.name)
    if args.action == "up":
        print(json.dumps(vm.up(progress=lambda m: print(f"aegis-lab: {m}", file=sys.stderr)),
                         indent=2))
    elif args.action == "down":
        vm.down()
    else:
        print(json.dumps(vm.show(), indent=2))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import run_bench, run_harden_bench

    if args.what == "harden":
        return run_harden_bench(nodes=args.nodes, prefix=args.prefix)
    return run_bench(nodes=args.nodes, rounds=args.rounds, prefix=args.prefix)


def cmd_controller(args: argparse.Namespace) -> int:
    from . import controller

    if args.action == "up":
        print(json.dumps(controller.up(args.prefix), indent=2))
    elif args.action == "down":
        controller.down(args.prefix)
    else:
        print(json.dumps(controller.show(args.prefix), indent=2))
    return 0


def cmd_wheels(args: argparse.Namespace) -> int:
    from .wheels import build_agent_wheels

    out, built = build_agent_wheels(force=args.force)
    print(f"aegis-lab: agent wheelhouse {'built' if built else 'up to date'}: {out}",
          file=sys.stderr)
    print(out)
    return 0


def build_parser() -> argparse.ArgumentParser:  # noqa: PLR0915 (one flat list of commands)
    p = argparse.ArgumentParser(prog="aegis-lab", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def prefix_arg(sp: argparse.ArgumentParser, required: bool = True) -> None:
        sp.add_argument("--prefix", type=check_prefix, required=required,
                        help="per-run prefix of the fleet (2-8 chars)")

    sp = sub.add_parser("node", help="create or destroy one node (called by Terraform)")
    sp.add_argument("action", choices=["create", "destroy"])
    sp.add_argument("--spec-env", help="environment variable holding the node spec JSON")
    sp.add_argument("--spec-json", help="the node spec as JSON")
    sp.set_defaults(func=cmd_node)

    sp = sub.add_parser("bridge", help="bring the fleet bridge up or down (called by Terraform)")
    sp.add_argument("action", choices=["up", "down"])
    prefix_arg(sp)
    sp.add_argument("--network", help="the fleet's /24, e.g. 10.213.7.0/24")
    sp.set_defaults(func=cmd_bridge)

    sp = sub.add_parser("image", help="build (if the recipe changed) and import the node image")
    sp.add_argument("action", choices=["ensure"])
    sp.set_defaults(func=cmd_image)

    sp = sub.add_parser("fleet", help="create, replace a node of, show or destroy a fleet")
    sp.add_argument("action", choices=["up", "replace", "down", "show"])
    prefix_arg(sp)
    sp.add_argument("--size", default=None, help="number of nodes (1-32) for `up`")
    sp.add_argument("--names", help="comma-separated node names for `up` instead of --size")
    sp.add_argument("--node", help="the node to replace")
    sp.set_defaults(func=cmd_fleet)

    sp = sub.add_parser("vm", help="a QEMU VM node (own kernel) for kernel-level checks")
    sp.add_argument("action", choices=["up", "down", "show"])
    prefix_arg(sp)
    sp.add_argument("--name", required=True, help="the VM's name, e.g. vm1")
    sp.set_defaults(func=cmd_vm)

    sp = sub.add_parser("leftovers", help="list host objects still carrying the prefix")
    prefix_arg(sp)
    sp.set_defaults(func=cmd_leftovers)

    sp = sub.add_parser("cleanup", help="destroy fleets and sweep what they left")
    prefix_arg(sp, required=False)
    sp.add_argument("--all", action="store_true", help="every fleet under .state/fleets")
    sp.set_defaults(func=cmd_cleanup)

    sp = sub.add_parser("env", help="print the environment for ansible/podman on a fleet")
    prefix_arg(sp, required=False)
    sp.set_defaults(func=cmd_env)

    sp = sub.add_parser("demo", help="the main job: bring up a fleet, reach it, tear it down")
    sp.add_argument("--nodes", default=3, help="fleet size (default 3)")
    sp.add_argument("--keep", action="store_true", help="keep the fleet running afterwards")
    sp.add_argument("--prefix", type=check_prefix, default="aegis")
    sp.set_defaults(func=cmd_demo)

    sp = sub.add_parser("controller", help="a controller on the fleet's bridge for its nodes")
    sp.add_argument("action", choices=["up", "down", "show"])
    prefix_arg(sp)
    sp.set_defaults(func=cmd_controller)

    sp = sub.add_parser("wheels", help="build the agent's wheelhouse for the nodes (if its "
                        "sources changed); prints its directory")
    sp.add_argument("--force", action="store_true", help="rebuild even if up to date")
    sp.set_defaults(func=cmd_wheels)

    sp = sub.add_parser("bench", help="fleet lifecycle timings, or hardening figures (Lynis)")
    sp.add_argument("what", nargs="?", choices=["fleet", "harden"], default="fleet")
    sp.add_argument("--nodes", default=3, help="fleet size (default 3)")
    sp.add_argument("--rounds", default=3, help="how many times to run the cycle (default 3)")
    sp.add_argument("--prefix", type=check_prefix, default="aegisbn")
    sp.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    logs.setup()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except LabInputError as exc:
        print(f"aegis-lab: error: {exc}", file=sys.stderr)
        return 2
    except TerraformFailure as exc:
        print(f"aegis-lab: terraform failed: {exc}", file=sys.stderr)
        return 1
    except RuntimeError as exc:
        print(f"aegis-lab: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

