"""``aegis-controller nodes``, ``node show``, ``node reenroll``, ``node trust``, ``profile set`` and
``token issue``: the nodes, what they must measure, and the one-time tokens they enroll
with."""

from __future__ import annotations

import argparse
import sys
import time

from aegis_protocol.attestation import reported_bpf

from ..attestation import profile_document
from ..domain import open_controller
from ..settings import Settings
from ..vault_wrap import VaultError, VaultSettings, wrap_bootstrap
from .conventions import (
    EXIT_FAILED,
    EXIT_OK,
    InputError,
    default_actor,
    positive,
    print_json,
    read_input,
)


def cmd_nodes_list(args: argparse.Namespace, settings: Settings) -> int:
    for node in open_controller(settings).nodes.all():
        print_json(node)
    return EXIT_OK


def cmd_node_show(args: argparse.Namespace, settings: Settings) -> int:
    ctl = open_controller(settings)
    node = ctl.nodes.get(args.node)
    print_json({**node, "events": ctl.intake.event_count(args.node)})
    return EXIT_OK


def cmd_node_reenroll(args: argparse.Namespace, settings: Settings) -> int:
    open_controller(settings).enrollment.allow_reenrollment(args.node, args.reason,
                                                            default_actor())
    print(f"{args.node} may enroll again: issue it a token (aegis-controller token issue "
          f"{args.node})", file=sys.stderr)
    return EXIT_OK


def cmd_node_trust(args: argparse.Namespace, settings: Settings) -> int:
    open_controller(settings).attestation.clear_suspicion(args.node, args.reason,
                                                          default_actor())
    return EXIT_OK


def cmd_node_secrets_role(args: argparse.Namespace, settings: Settings) -> int:
    if (args.role is None) == (not args.clear):
        raise InputError("give a ROLE (a node role of the vault role's vault_node_roles, "
                         "e.g. web) or --clear, not both")
    open_controller(settings).secrets.set_role(args.node, None if args.clear else args.role,
                                               default_actor())
    return EXIT_OK


def cmd_node_labels(args: argparse.Namespace, settings: Settings) -> int:
    labels = {}
    for item in args.labels:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise InputError(f"label {item!r}: write KEY=VALUE, e.g. role=db")
        labels[key] = value
    print_json(open_controller(settings).access.set_node(args.node, labels, args.address,
                                                         default_actor()))
    return EXIT_OK


def cmd_node_secrets(args: argparse.Namespace, settings: Settings) -> int:
    ctl = open_controller(settings)
    deadline = time.monotonic() + (args.wait_revoked or 0)
    while True:
        status = ctl.secrets.status(args.node)
        if not args.wait_revoked or not status["pending_revocations"]:
            break
        if time.monotonic() > deadline:
            print_json(status)
            print(f"aegis-controller: {status['pending_revocations']} revocation(s) of "
                  f"{args.node} still pending after {args.wait_revoked} s (is "
                  "`aegis-controller serve` running with --secrets-token-file? see "
                  "last_outcome)", file=sys.stderr)
            return EXIT_FAILED
        time.sleep(0.5)
    print_json(status)
    return EXIT_OK


def cmd_profile_set(args: argparse.Namespace, settings: Settings) -> int:
    text = read_input(args.file)
    profile = profile_document(text, args.file)
    ctl = open_controller(settings)
    if args.pin_bpf:
        try:
            profile.bpf.update(reported_bpf(args.node, ctl.nodes.get(args.node)["measurement"]))
        except ValueError as err:
            raise InputError(str(err)) from None
    ctl.attestation.set_profile(args.node, profile, default_actor())
    if args.pin_bpf:
        print_json({"bpf": profile.bpf})
    return EXIT_OK


def cmd_token_issue(args: argparse.Namespace, settings: Settings) -> int:
    try:
        vault = None if args.wrap is False else VaultSettings.resolve(
            args.vault_addr, args.vault_token_file, args.vault_ca)
    except VaultError as err:
        raise InputError(str(err)) from None
    if args.wrap and vault is None:
        raise InputError("--wrap needs a Vault-compatible server: set BAO_ADDR (or "
                         "VAULT_ADDR) or pass --vault-addr")
    wrap = None if vault is None else (
        lambda token: wrap_bootstrap(vault, args.node, token, args.ttl))
    try:
        token = open_controller(settings).enrollment.issue_token(
            args.node, args.ttl, actor=default_actor(), wrap=wrap)
    except VaultError as err:
        raise InputError(f"{err} (no token was issued)") from None
    if vault is not None:
        print(f"response-wrapped by {vault.addr}: the node's agent unwraps it there once "
              "(controller.vault.url in its config)", file=sys.stderr)
    print(token)  # the secret itself goes to stdout only, never to a log
    return EXIT_OK


def _register_profile(groups: argparse._SubParsersAction) -> None:
    profile = groups.add_parser("profile", help="a node's expected attestation profile")
    verbs = profile.add_subparsers(dest="verb", required=True, metavar="VERB")
    sp = verbs.add_parser("set", help="set NODE's expected profile from a JSON FILE (an "
                          "expected profile, or the golden record the harden role wrote)")
    sp.add_argument("node")
    sp.add_argument("file")
    sp.add_argument("--pin-bpf", action="store_true",
                    help="also expect the BPF programs (by tag) and attach modes of the "
                    "node's last attestation: a swapped or unloaded program then makes the "
                    "node suspect")
    sp.set_defaults(func=cmd_profile_set)


def _register_token(groups: argparse._SubParsersAction) -> None:
    token = groups.add_parser("token", help="one-time bootstrap tokens")
    verbs = token.add_subparsers(dest="verb", required=True, metavar="VERB")
    sp = verbs.add_parser("issue", help="issue a token for NODE (printed once)")
    sp.add_argument("node")
    sp.add_argument("--ttl", type=positive, default=600, help="seconds (default 600)")
    sp.add_argument("--wrap", action=argparse.BooleanOptionalAction, default=None,
                    help="response-wrap the token through a Vault-compatible server and "
                    "print the wrapping token (default: when BAO_ADDR/VAULT_ADDR is set)")
    sp.add_argument("--vault-addr", help="the server's address (else AEGIS_VAULT_ADDR, "
                    "BAO_ADDR, VAULT_ADDR)")
    sp.add_argument("--vault-token-file", help="file holding a token that may update "
                    "sys/wrapping/wrap (else BAO_TOKEN, VAULT_TOKEN)")
    sp.add_argument("--vault-ca", help="CA bundle for an https address (else BAO_CACERT, "
                    "VAULT_CACERT)")
    sp.set_defaults(func=cmd_token_issue)


def _register_nodes(groups: argparse._SubParsersAction) -> None:
    groups.add_parser("nodes", help="list nodes and their trust state").set_defaults(
        func=cmd_nodes_list)
    node = groups.add_parser("node", help="one node")
    verbs = node.add_subparsers(dest="verb", required=True, metavar="VERB")
    sp = verbs.add_parser("show")
    sp.add_argument("node")
    sp.set_defaults(func=cmd_node_show)
    sp = verbs.add_parser("reenroll", help="let a suspect, quarantined or retired NODE "
                          "enroll again (back to provisioning; recorded with the reason)")
    sp.add_argument("node")
    sp.add_argument("--reason", required=True, help="why (recorded on the ledger)")
    sp.set_defaults(func=cmd_node_reenroll)
    sp = verbs.add_parser("trust", help="clear a suspect NODE's suspicion (a measurement "
                          "mismatch clears only this way or by a rebuild; recorded)")
    sp.add_argument("node")
    sp.add_argument("--reason", required=True, help="why (recorded on the ledger)")
    sp.set_defaults(func=cmd_node_trust)
    sp = verbs.add_parser("secrets-role", help="the node role (of the vault role's "
                          "vault_node_roles) whose AppRole NODE's leased secrets come from; "
                          "a trusted node with one gets them (recorded)")
    sp.add_argument("node")
    sp.add_argument("role", nargs="?", help="node role R: AppRole <prefix>-R")
    sp.add_argument("--clear", action="store_true",
                    help="no role: NODE gets no secrets and those it has are revoked")
    sp.set_defaults(func=cmd_node_secrets_role)
    sp = verbs.add_parser("labels", help="set NODE's labels (replacing them; access "
                          "and label policies select nodes by them) and the address users "
                          "and other nodes reach it at (recorded; label policies follow)")
    sp.add_argument("node")
    sp.add_argument("labels", nargs="*", metavar="KEY=VALUE")
    sp.add_argument("--address", metavar="IP", help="NODE's IPv4 address (access edges end "
                    "there; label policy entries use it)")
    sp.set_defaults(func=cmd_node_labels)
    sp = verbs.add_parser("secrets", help="NODE's secrets role and each set of leased "
                          "secrets it fetched: accessor, leases, logins, revocation state")
    sp.add_argument("node")
    sp.add_argument("--wait-revoked", type=positive, metavar="S",
                    help="wait up to S seconds until no revocation is pending (exit 1 if "
                    "one still is)")
    sp.set_defaults(func=cmd_node_secrets)
