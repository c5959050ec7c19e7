"""``aegis-controller orders``, ``order create`` and ``incidents``: signed orders to nodes
and the incidents raised from their events."""

from __future__ import annotations

import argparse
from typing import get_args

from aegis_protocol.commands import takes_text
from aegis_protocol.orders import OrderKind

from ..domain import open_controller
from ..settings import Settings
from .conventions import EXIT_OK, InputError, default_actor, positive, print_json


def cmd_incidents_list(args: argparse.Namespace, settings: Settings) -> int:
    for incident in open_controller(settings).intake.incidents(args.node):
        print_json(incident)
    return EXIT_OK


def cmd_events_list(args: argparse.Namespace, settings: Settings) -> int:
    for event in open_controller(settings).intake.events(args.node, args.kind or (),
                                                         args.limit):
        print_json(event)
    return EXIT_OK


def cmd_orders_list(args: argparse.Namespace, settings: Settings) -> int:
    for order in open_controller(settings).orders.all(args.node):
        print_json(order)
    return EXIT_OK


def cmd_order_create(args: argparse.Namespace, settings: Settings) -> int:
    extra: dict[str, object] = {}
    for item in args.arg:
        key, sep, value = item.partition("=")
        if not sep:
            raise InputError(f"--arg {item!r}: write KEY=VALUE, e.g. --arg edge='a -> b tcp/22'")
        extra[key] = int(value) if value.isdigit() and not takes_text(args.kind, key) \
            else value
    signed = open_controller(settings).orders.create(args.node, args.kind, extra,
                                                     default_actor(), args.lifetime)
    print_json(signed.model_dump(mode="json"))
    return EXIT_OK


def _register_incidents(groups: argparse._SubParsersAction) -> None:
    sp = groups.add_parser("incidents", help="incidents raised from agents' events")
    sp.add_argument("--node")
    sp.set_defaults(func=cmd_incidents_list)
    sp = groups.add_parser("events", help="the newest events agents sent, oldest first "
                           "(one JSON object per line)")
    sp.add_argument("--node")
    sp.add_argument("--kind", action="append", metavar="KIND",
                    help="only events of this kind (repeatable: exec, connect, policy, ...)")
    sp.add_argument("--limit", type=positive, default=100, help="at most this many (100)")
    sp.set_defaults(func=cmd_events_list)


def _register_orders(groups: argparse._SubParsersAction) -> None:
    sp = groups.add_parser("orders", help="list orders and their acknowledgments")
    sp.add_argument("--node")
    sp.set_defaults(func=cmd_orders_list)
    order = groups.add_parser("order", help="signed orders to a node")
    verbs = order.add_subparsers(dest="verb", required=True, metavar="VERB")
    sp = verbs.add_parser("create", help="sign and queue an order for NODE")
    sp.add_argument("node")
    sp.add_argument("kind", choices=get_args(OrderKind))
    sp.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE")
    sp.add_argument("--lifetime", type=positive, default=300, help="seconds (default 300)")
    sp.set_defaults(func=cmd_order_create)
