"""``aegis-controller operator ...``: revoke an operator's client certificate."""

from __future__ import annotations

import argparse

from ..domain import open_controller
from ..settings import Settings
from .conventions import EXIT_OK, default_actor, print_json


def cmd_operator_revoke(args: argparse.Namespace, settings: Settings) -> int:
    print_json(open_controller(settings).operators.revoke(args.name, default_actor()))
    return EXIT_OK


def _register_operator(groups: argparse._SubParsersAction) -> None:
    operator = groups.add_parser("operator", help="operators: revoke a certificate")
    verbs = operator.add_subparsers(dest="verb", required=True, metavar="VERB")
    sp = verbs.add_parser("revoke", help="refuse NAME's operator certificate from now on "
                                         "(until `operator-cert NAME` issues a new one)")
    sp.add_argument("name")
    sp.set_defaults(func=cmd_operator_revoke)
