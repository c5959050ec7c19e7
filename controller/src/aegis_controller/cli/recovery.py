"""``aegis-controller recovery``: rebuild-first recovery jobs (issue 14) — list and show
them, start one for a quarantined node (or only show what it would do, ``--dry-run``),
approve or reject one the guard rails held. The jobs themselves are run by the recovery
engine of ``aegis-controller serve`` (:mod:`aegis_controller.recovery.engine`)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..domain import open_controller
from ..recovery.backends import make_steps
from ..recovery.settings import RecoverySettings, RecoverySettingsInvalid
from ..recovery.steps import StepError, Steps
from ..settings import Settings
from .conventions import EXIT_OK, InputError, default_actor, print_json

CONFIG_ENV = "AEGIS_RECOVERY_CONFIG"


def recovery_config(given: str | None, settings: Settings) -> Path:
    """The recovery settings file: ``--config``, else $AEGIS_RECOVERY_CONFIG, else
    ``<state>/recovery.yml``."""
    return Path(given or os.environ.get(CONFIG_ENV) or settings.state_dir / "recovery.yml")


def recovery_steps(config: Path, settings: Settings) -> tuple[RecoverySettings, Steps]:
    """The recovery settings in ``config`` and the steps of their ``backend`` (runner, awx,
    or python: a factory of your own)."""
    try:
        recovery = RecoverySettings.load(config)
        return recovery, make_steps(recovery, runs_dir=settings.state_dir / "recovery-runs")
    except RecoverySettingsInvalid as err:
        raise InputError(str(err)) from None


def cmd_recovery_list(args: argparse.Namespace, settings: Settings) -> int:
    for job in open_controller(settings).recovery.list(node_id=args.node, active=args.active):
        print_json(job)
    return EXIT_OK


def cmd_recovery_show(args: argparse.Namespace, settings: Settings) -> int:
    store = open_controller(settings).recovery
    job = store.get(args.job)
    print_json({**job, "history": store.history(args.job)})
    return EXIT_OK


def cmd_recovery_start(args: argparse.Namespace, settings: Settings) -> int:
    ctl = open_controller(settings)
    if args.dry_run:
        node = ctl.nodes.get(args.node)  # NotFound: "no node 'x'"
        try:
            steps = recovery_steps(recovery_config(args.config, settings), settings)[1]
            plan = steps.dry_run(args.node)
        except StepError as err:
            raise InputError(f"dry run of {args.node}: {err}") from None
        if args.json:
            print_json({"node_id": plan.node_id, "node_state": node["state"],
                        "terraform_plan": list(plan.terraform_plan),
                        "playbooks": list(plan.playbooks)})
            return EXIT_OK
        print(f"dry run: recovery of {args.node} (now {node['state']}); nothing was changed")
        print("terraform plan:")
        for line in plan.terraform_plan:
            print(f"  {line}")
        print("playbooks, in order:")
        for playbook in plan.playbooks:
            print(f"  {playbook}")
        return EXIT_OK
    job = ctl.recovery.create(args.node, actor=default_actor(), reason=args.reason)
    print_json(job)
    print(f"recovery job {job['job_id']} queued for {args.node}: the recovery engine of "
          "`aegis-controller serve` runs it when the guard rails allow; follow it with "
          f"`aegis-controller recovery show {job['job_id']}`", file=sys.stderr)
    return EXIT_OK


def cmd_recovery_approve(args: argparse.Namespace, settings: Settings) -> int:
    print_json(open_controller(settings).recovery.approve(args.job, default_actor()))
    return EXIT_OK


def cmd_recovery_reject(args: argparse.Namespace, settings: Settings) -> int:
    print_json(open_controller(settings).recovery.reject(args.job, default_actor(),
                                                         args.reason))
    return EXIT_OK


def _register_recovery(groups: argparse._SubParsersAction) -> None:
    recovery = groups.add_parser("recovery", help="rebuild-first recovery jobs: replace a "
                                 "quarantined node by a fresh, attested one")
    verbs = recovery.add_subparsers(dest="verb", required=True, metavar="VERB")
    sp = verbs.add_parser("list", help="recovery jobs, oldest first (JSON lines)")
    sp.add_argument("--node", help="only NODE's jobs")
    sp.add_argument("--active", action="store_true", help="only jobs not trusted or failed")
    sp.set_defaults(func=cmd_recovery_list)
    sp = verbs.add_parser("show", help="one job and its history (JSON)")
    sp.add_argument("job")
    sp.set_defaults(func=cmd_recovery_show)
    sp = verbs.add_parser("start", help="queue a recovery job for the quarantined NODE (the "
                          "guard rails still judge it), or --dry-run: show what it would do")
    sp.add_argument("node")
    sp.add_argument("--reason", help="why (recorded; default: the node's quarantine reason)")
    sp.add_argument("--dry-run", action="store_true", help="print the Terraform plan and the "
                    "playbooks the recovery would run, changing nothing")
    sp.add_argument("--config", metavar="FILE", help="recovery settings for --dry-run "
                    f"(default ${CONFIG_ENV} or <state>/recovery.yml)")
    sp.add_argument("--json", action="store_true", help="--dry-run's result as JSON")
    sp.set_defaults(func=cmd_recovery_start)
    sp = verbs.add_parser("approve", help="let a job the guard rails held go on (it is not "
                          "held again, but still waits for a free slot; recorded)")
    sp.add_argument("job")
    sp.set_defaults(func=cmd_recovery_approve)
    sp = verbs.add_parser("reject", help="reject a held job: it fails, its node stays "
                          "quarantined (recorded with the reason)")
    sp.add_argument("job")
    sp.add_argument("--reason", required=True, help="why (recorded on the ledger)")
    sp.set_defaults(func=cmd_recovery_reject)
