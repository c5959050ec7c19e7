"""``aegis-controller segment``: label policies (identity-based east-west edges).

``segment policy set FILE`` checks a YAML file and makes it the label policies in force
(a refused file changes nothing), ``segment policy show`` prints them, ``segment policy
mode NAME observe|enforce`` switches one policy, and ``segment status`` shows what each
node was last sent and whether its agent ran it.
"""

from __future__ import annotations

import argparse

from ..domain import open_controller
from ..settings import Settings
from .conventions import EXIT_OK, default_actor, print_json, read_input


def cmd_segment_policy_set(args: argparse.Namespace, settings: Settings) -> int:
    text = read_input(args.file)
    print_json(open_controller(settings).segment.set_policy(text, default_actor()))
    return EXIT_OK


def cmd_segment_policy_show(args: argparse.Namespace, settings: Settings) -> int:
    print_json(open_controller(settings).segment.current())
    return EXIT_OK


def cmd_segment_policy_mode(args: argparse.Namespace, settings: Settings) -> int:
    print_json(open_controller(settings).segment.set_mode(args.name, args.mode,
                                                          default_actor()))
    return EXIT_OK


def cmd_segment_status(args: argparse.Namespace, settings: Settings) -> int:
    for row in open_controller(settings).segment.status():
        print_json(row)
    return EXIT_OK


def _register_segment(groups: argparse._SubParsersAction) -> None:
    segment = groups.add_parser("segment", help="label policies: east-west edges between "
                                "trusted nodes selected by their labels")
    verbs = segment.add_subparsers(dest="verb", required=True, metavar="VERB")
    verbs.add_parser("status", help="what each node was last sent, and its order's state"
                     ).set_defaults(func=cmd_segment_status)
    policy = verbs.add_parser("policy", help="the label policies in force")
    pverbs = policy.add_subparsers(dest="policy_verb", required=True, metavar="VERB")
    sp = pverbs.add_parser("set", help="check FILE (YAML) and make it the label policies in "
                           "force, pushed to the nodes; a refused file changes nothing")
    sp.add_argument("file")
    sp.set_defaults(func=cmd_segment_policy_set)
    pverbs.add_parser("show", help="the label policies in force").set_defaults(
        func=cmd_segment_policy_show)
    sp = pverbs.add_parser("mode", help="switch one policy between observe (would-be drops "
                           "pass and are counted) and enforce (they are dropped)")
    sp.add_argument("name")
    sp.add_argument("mode", choices=["observe", "enforce"])
    sp.set_defaults(func=cmd_segment_policy_mode)
