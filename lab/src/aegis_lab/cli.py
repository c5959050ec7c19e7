"""``aegis-lab``: the local lab fleet from the command line.

Terraform's local-exec provisioners call ``node``/``bridge``; people, Molecule and tests
call ``fleet``, ``ee``, ``vm``, ``controller``, ``demo``, ``wheels``, ``env``, ``leftovers`` and
``cleanup``. Same style as ``aegis-controller``: each group registers its verbs in one
``_register_<group>``, each command is ``cmd_<group>_<verb>(args, paths)`` set with
``set_defaults(func=...)``, and ``main`` makes the one :class:`~aegis_lab.paths.Paths`.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from aegis_controller import logs
from aegis_controller.playbook import PlaybookFailure
from aegis_controller.terraform import TerraformFailure

from .naming import CAPS, LabInputError, check_prefix
from .paths import Paths

Groups = argparse._SubParsersAction


def _progress(msg: str) -> None:
    print(f"aegis-lab: {msg}", file=sys.stderr)


def _prefix_arg(sp: argparse.ArgumentParser, required: bool = True) -> None:
    sp.add_argument("--prefix", type=check_prefix, required=required,
                    help="per-run prefix of the fleet (2-8 chars)")


def _verbs(groups: Groups, name: str, help_: str) -> Groups:
    group = groups.add_parser(name, help=help_)
    return group.add_subparsers(dest="verb", required=True, metavar="VERB")


# -- node (Terraform's local-exec) ---------------------------------------------------------
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


def cmd_node_create(args: argparse.Namespace, paths: Paths) -> int:
    from . import node

    print(json.dumps(node.create(_spec_from(args))))
    return 0


def cmd_node_destroy(args: argparse.Namespace, paths: Paths) -> int:
    from . import node

    node.destroy(_spec_from(args))
    return 0


def _register_node(groups: Groups) -> None:
    verbs = _verbs(groups, "node", "create or destroy one node (called by Terraform)")
    for verb, func in (("create", cmd_node_create), ("destroy", cmd_node_destroy)):
        sp = verbs.add_parser(verb)
        sp.add_argument("--spec-env", help="environment variable holding the node spec JSON")
        sp.add_argument("--spec-json", help="the node spec as JSON")
        sp.set_defaults(func=func)


# -- bridge (Terraform's local-exec) -------------------------------------------------------
def cmd_bridge_up(args: argparse.Namespace, paths: Paths) -> int:
    from . import network
    from .naming import FleetNetwork

    if not args.network:
        raise LabInputError("bridge up needs --network CIDR (a private /24)")
    print(network.bridge_up(args.prefix, FleetNetwork(args.network)))
    return 0


def cmd_bridge_down(args: argparse.Namespace, paths: Paths) -> int:
    from . import network

    network.bridge_down(args.prefix)
    return 0


def _register_bridge(groups: Groups) -> None:
    verbs = _verbs(groups, "bridge", "bring the fleet bridge up or down (called by Terraform)")
    sp = verbs.add_parser("up")
    _prefix_arg(sp)
    sp.add_argument("--network", help="the fleet's /24, e.g. 10.213.7.0/24")
    sp.set_defaults(func=cmd_bridge_up)
    sp = verbs.add_parser("down")
    _prefix_arg(sp)
    sp.set_defaults(func=cmd_bridge_down)


# -- image ------------------------------------------------------------------------------
def cmd_image_ensure(args: argparse.Namespace, paths: Paths) -> int:
    from .image import ensure_image

    img = ensure_image(progress=_progress)
    print(json.dumps({"ref": img.ref, "tarball": str(img.tarball), "built": img.built,
                      "imported": img.imported, "seconds": round(img.seconds, 2)}))
    return 0


def cmd_image_bake(args: argparse.Namespace, paths: Paths) -> int:
    from .bake import bake_image, load_variables

    img = bake_image(paths, prefix=args.prefix, variables=load_variables(args.vars_file),
                     progress=_progress)
    print(json.dumps(img.as_dict()))
    return 0


def _register_image(groups: Groups) -> None:
    verbs = _verbs(groups, "image", "build (if the recipe changed) and import the node "
                   "image; bake the golden image")
    verbs.add_parser("ensure").set_defaults(func=cmd_image_ensure)
    sp = verbs.add_parser("bake", help="bake the golden node image (playbooks/bake.yml: "
                          "harden + agent install, identity removed) unless an image of "
                          "the same roles and variables exists; prints its reference")
    sp.add_argument("--prefix", type=check_prefix, default="aegis",
                    help="prefix of the build container <prefix>_bake (default aegis)")
    sp.add_argument("--vars-file", help="YAML/JSON mapping of role variables on top of the "
                    "lab's bake variables; converge fleets booted from the image with the "
                    "same ones")
    sp.set_defaults(func=cmd_image_bake)


# -- ee ---------------------------------------------------------------------------------
def cmd_ee_build(args: argparse.Namespace, paths: Paths) -> int:
    from .ee import ensure_ee

    img = ensure_ee(paths, progress=_progress, force=args.force)
    _progress(f"EE {img.ref} {'built' if img.built else 'reused'} in {img.seconds:.1f} s "
              f"(aegis.fleet {img.collection.version}, files {img.collection.files_sha256[:12]})")
    print(json.dumps(img.as_dict()))
    return 0


def _register_ee(groups: Groups) -> None:
    verbs = _verbs(groups, "ee", "the execution environment (AWX / ansible-runner's "
                   "container mode)")
    sp = verbs.add_parser("build", help="build aegis-ee-base (debootstrap) and aegis-ee "
                          "(ansible-builder, podman) if anything they are made of changed")
    sp.add_argument("--force", action="store_true",
                    help="run ansible-builder even if the image for this hash exists")
    sp.set_defaults(func=cmd_ee_build)


# -- fleet ------------------------------------------------------------------------------
def cmd_fleet_up(args: argparse.Namespace, paths: Paths) -> int:
    from .fleet import LocalFleet

    fleet = LocalFleet(args.prefix, paths)
    names = [n for n in (args.names or "").split(",") if n] or None
    info = fleet.up(size=args.size, names=names, caps=args.caps, baked=args.baked)
    print(json.dumps({"fleet": info, "inventory": str(fleet.inventory_file),
                      "timings": fleet.timings.steps}, indent=2))
    return 0


def cmd_fleet_replace(args: argparse.Namespace, paths: Paths) -> int:
    from .fleet import LocalFleet

    fleet = LocalFleet(args.prefix, paths)
    info = fleet.replace(args.node)
    print(json.dumps({"fleet": info, "timings": fleet.timings.steps}, indent=2))
    return 0


def cmd_fleet_down(args: argparse.Namespace, paths: Paths) -> int:
    from .cleanup import down
    from .fleet import LocalFleet

    fleet = LocalFleet(args.prefix, paths)
    down(fleet)
    print(json.dumps({"timings": fleet.timings.steps}))
    return 0


def cmd_fleet_show(args: argparse.Namespace, paths: Paths) -> int:
    from .fleet import LocalFleet

    fleet = LocalFleet(args.prefix, paths)
    print(json.dumps({"fleet": fleet.info(), "inventory": str(fleet.inventory_file)},
                     indent=2))
    return 0


def _register_fleet(groups: Groups) -> None:
    verbs = _verbs(groups, "fleet", "create, replace a node of, show or destroy a fleet")
    sp = verbs.add_parser("up", help="create (or converge) the fleet")
    _prefix_arg(sp)
    sp.add_argument("--size", default=None, help="number of nodes (1-32)")
    sp.add_argument("--names", help="comma-separated node names instead of --size")
    sp.add_argument("--caps", choices=tuple(CAPS), default=None,
                    help="the nodes' capabilities in the host's user namespace: base "
                    "(default; no SYS_ADMIN, BPF or PERFMON), admin (+SYS_ADMIN, for roles "
                    "that mount or use a scratch netns, e.g. aegis.fleet.harden), agent "
                    "(+BPF, PERFMON, the agent under test); admin and agent let root in a "
                    "node trace the host. A fleet keeps its level unless another is given")
    image = sp.add_mutually_exclusive_group()
    image.add_argument("--baked", dest="baked", action="store_true", default=None,
                       help="boot the nodes from the baked golden image (`aegis-lab image "
                       "bake`, run first if needed); a fleet keeps its image unless "
                       "--baked or --unbaked is given, and a new image re-creates the nodes")
    image.add_argument("--unbaked", dest="baked", action="store_false",
                       help="boot the nodes from the plain node image (the default)")
    sp.set_defaults(func=cmd_fleet_up)
    sp = verbs.add_parser("replace", help="replace one node with a fresh one")
    _prefix_arg(sp)
    sp.add_argument("--node", required=True, help="the node to replace, e.g. node1")
    sp.set_defaults(func=cmd_fleet_replace)
    for verb, func, help_ in (("down", cmd_fleet_down, "destroy the fleet and sweep"),
                              ("show", cmd_fleet_show, "print the fleet output")):
        sp = verbs.add_parser(verb, help=help_)
        _prefix_arg(sp)
        sp.set_defaults(func=func)


# -- vm ---------------------------------------------------------------------------------
def cmd_vm_up(args: argparse.Namespace, paths: Paths) -> int:
    from .vm import VmNode

    print(json.dumps(VmNode(args.prefix, args.name, paths).up(progress=_progress), indent=2))
    return 0


def cmd_vm_down(args: argparse.Namespace, paths: Paths) -> int:
    from .vm import VmNode

    VmNode(args.prefix, args.name, paths).down()
    return 0


def cmd_vm_show(args: argparse.Namespace, paths: Paths) -> int:
    from .vm import VmNode

    print(json.dumps(VmNode(args.prefix, args.name, paths).show(), indent=2))
    return 0


def _register_vm(groups: Groups) -> None:
    verbs = _verbs(groups, "vm", "a QEMU VM node (own kernel) for kernel-level checks")
    for verb, func in (("up", cmd_vm_up), ("down", cmd_vm_down), ("show", cmd_vm_show)):
        sp = verbs.add_parser(verb)
        _prefix_arg(sp)
        sp.add_argument("--name", required=True, help="the VM's name, e.g. vm1")
        sp.set_defaults(func=func)


# -- controller -------------------------------------------------------------------------
def cmd_controller_up(args: argparse.Namespace, paths: Paths) -> int:
    from . import controller
    from .fleet import LocalFleet

    print(json.dumps(controller.up(LocalFleet(args.prefix, paths)), indent=2))
    return 0


def cmd_controller_down(args: argparse.Namespace, paths: Paths) -> int:
    from . import controller
    from .fleet import LocalFleet

    fleet = LocalFleet(args.prefix, paths)
    recorded = controller.show(fleet)
    outcome = controller.down(fleet)
    if outcome == "stale" and recorded:
        _progress(f"controller state was stale: pid {recorded['pid']} is not this fleet's "
                  "controller any more; nothing was signalled, the state file is removed")
    else:
        _progress(f"controller {outcome}")
    return 0


def cmd_controller_show(args: argparse.Namespace, paths: Paths) -> int:
    from . import controller
    from .fleet import LocalFleet

    print(json.dumps(controller.show(LocalFleet(args.prefix, paths)), indent=2))
    return 0


def _register_controller(groups: Groups) -> None:
    verbs = _verbs(groups, "controller", "a controller on the fleet's bridge for its nodes")
    for verb, func in (("up", cmd_controller_up), ("down", cmd_controller_down),
                       ("show", cmd_controller_show)):
        sp = verbs.add_parser(verb)
        _prefix_arg(sp)
        sp.set_defaults(func=func)


# -- one-verb commands ----------------------------------------------------------------------
def cmd_leftovers(args: argparse.Namespace, paths: Paths) -> int:
    from .cleanup import leftovers

    found = leftovers(args.prefix)
    for item in found:
        print(item)
    return 1 if found else 0


def cmd_cleanup(args: argparse.Namespace, paths: Paths) -> int:
    from .cleanup import down, leftovers, sweep
    from .fleet import LocalFleet

    prefixes = [args.prefix] if args.prefix else []
    if args.all:
        prefixes += [p.name for p in paths.fleets.iterdir()] if paths.fleets.is_dir() else []
        if paths.vms.is_dir():
            prefixes += [p.name.split("-", 1)[0] for p in paths.vms.iterdir()]
    if not prefixes:
        raise LabInputError("cleanup needs --prefix PREFIX or --all")
    rc = 0
    for prefix in sorted(set(prefixes)):
        fleet = LocalFleet(prefix, paths)
        try:
            down(fleet)
        except (TerraformFailure, LabInputError) as exc:
            print(f"aegis-lab: terraform destroy of {prefix} failed ({exc}); sweeping",
                  file=sys.stderr)
            sweep(fleet)
        left = leftovers(prefix)
        for item in left:
            print(f"{prefix}: still present: {item}")
        rc |= 1 if left else 0
    return rc


def cmd_env(args: argparse.Namespace, paths: Paths) -> int:
    from .fleet import LocalFleet
    from .playbook import ansible_env

    env = ansible_env(paths, LocalFleet(args.prefix, paths) if args.prefix else None)
    for key in sorted(env):
        if key.startswith(("ANSIBLE_", "CONTAINERS_", "AEGIS_", "TF_")) or key in (
                "PATH", "CHECKPOINT_DISABLE"):
            print(f"export {key}={shlex.quote(env[key])}")
    return 0


def cmd_demo(args: argparse.Namespace, paths: Paths) -> int:
    from .demo import run_demo

    return run_demo(paths, nodes=args.nodes, keep=args.keep, prefix=args.prefix,
                    report=args.report, baked=args.baked)


def cmd_wheels(args: argparse.Namespace, paths: Paths) -> int:
    from .wheels import build_agent_wheels

    out, built = build_agent_wheels(paths, force=args.force)
    _progress(f"agent wheelhouse {'built' if built else 'up to date'}: {out}")
    print(out)
    return 0


def _register_tools(groups: Groups) -> None:
    sp = groups.add_parser("leftovers", help="list host objects still carrying the prefix")
    _prefix_arg(sp)
    sp.set_defaults(func=cmd_leftovers)

    sp = groups.add_parser("cleanup", help="destroy fleets and sweep what they left")
    _prefix_arg(sp, required=False)
    sp.add_argument("--all", action="store_true", help="every fleet under the state dir")
    sp.set_defaults(func=cmd_cleanup)

    sp = groups.add_parser("env", help="print the environment for ansible/podman on a fleet")
    _prefix_arg(sp, required=False)
    sp.set_defaults(func=cmd_env)

    sp = groups.add_parser("demo", help="the main job, the whole story: a fleet hardened, "
                           "enrolled, trusted and holding leased secrets; one node "
                           "compromised, quarantined and replaced by a fresh trusted one; "
                           "a timeline and a report file")
    sp.add_argument("--nodes", default=3, help="fleet size (default 3, at least 3)")
    sp.add_argument("--report", type=Path, help="where the report goes (default "
                    "<state>/demo/report-<prefix>.json, with a .txt beside it)")
    sp.add_argument("--keep", action="store_true", help="keep the fleet running afterwards")
    sp.add_argument("--baked", action="store_true", help="boot the baked golden image "
                    "(aegis-lab image bake, baked first if needed) and prove no drift "
                    "instead of hardening a plain image")
    sp.add_argument("--prefix", type=check_prefix, default="aegis")
    sp.set_defaults(func=cmd_demo)

    sp = groups.add_parser("wheels", help="build the agent's wheelhouse for the nodes (if "
                           "its sources changed); prints its directory")
    sp.add_argument("--force", action="store_true", help="rebuild even if up to date")
    sp.set_defaults(func=cmd_wheels)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aegis-lab", description=__doc__)
    p.add_argument("--repo", help="the Aegis checkout to drive (default: $AEGIS_REPO, else "
                   "the checkout aegis-lab is installed from, else one above the cwd)")
    p.add_argument("--state-dir", help="where the lab keeps state (default: "
                   "$AEGIS_STATE_DIR, else <repo>/.state)")
    groups = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in (_register_node, _register_bridge, _register_image, _register_ee,
                     _register_fleet,
                     _register_vm, _register_controller, _register_tools):
        register(groups)
    return p


def main(argv: list[str] | None = None) -> int:
    logs.setup()
    args = build_parser().parse_args(argv)
    try:
        paths = Paths.discover(args.repo, args.state_dir)
        return int(args.func(args, paths) or 0)
    except LabInputError as exc:
        print(f"aegis-lab: error: {exc}", file=sys.stderr)
        return 2
    except TerraformFailure as exc:
        print(f"aegis-lab: terraform failed: {exc}", file=sys.stderr)
        return 1
    except (PlaybookFailure, RuntimeError) as exc:
        print(f"aegis-lab: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
