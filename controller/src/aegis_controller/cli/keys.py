"""``aegis-controller keys ...`` and ``operator-cert``: the ledger signing key and operator
client certificates from the controller's CA."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from aegis_protocol.files import write_atomically

from ..domain import open_controller
from ..ledger import init_keys, load_signer, load_verifier
from ..pki import OPERATOR_CERT_HOURS
from ..settings import Settings
from .conventions import EXIT_OK, default_actor, env_int, positive, print_json


def cmd_keys_init(args: argparse.Namespace, settings: Settings) -> int:
    private, public, key_id = init_keys(settings.key_dir, force=args.force)
    print_json({"private_key": str(private), "public_key": str(public), "key_id": key_id})
    return EXIT_OK


def cmd_keys_public(args: argparse.Namespace, settings: Settings) -> int:
    if settings.public_key.exists():
        verifier = load_verifier(settings.public_key)
    else:
        verifier = load_signer(settings.private_key).verifier
    sys.stdout.write(verifier.public_pem())
    return EXIT_OK


def cmd_operator_cert_issue(args: argparse.Namespace, settings: Settings) -> int:
    hours = args.hours or env_int("AEGIS_OPERATOR_CERT_HOURS") or OPERATOR_CERT_HOURS
    key, cert = open_controller(settings).operators.issue(
        args.name, default_actor(), hours, may_approve=args.approve,
        groups=tuple(args.group or ()))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomically(out / f"operator-{args.name}.key", key, mode=0o600)
    write_atomically(out / f"operator-{args.name}.pem", cert, mode=0o644)
    print_json({"key": str(out / f"operator-{args.name}.key"),
                "certificate": str(out / f"operator-{args.name}.pem")})
    return EXIT_OK


def _register_keys(groups: argparse._SubParsersAction) -> None:
    keys = groups.add_parser("keys", help="the controller's keys")
    verbs = keys.add_subparsers(dest="verb", required=True, metavar="VERB")
    sp = verbs.add_parser("init", help="create the ledger signing key (once per controller)")
    sp.add_argument("--force", action="store_true",
                    help="replace an existing key (old records then fail to verify)")
    sp.set_defaults(func=cmd_keys_init)
    sp = verbs.add_parser("public", help="print the ledger public key (PEM) for verifiers")
    sp.set_defaults(func=cmd_keys_public)


def _register_operator_cert(groups: argparse._SubParsersAction) -> None:
    sp = groups.add_parser("operator-cert", help="issue an operator client certificate (it "
                           "replaces the operator's earlier one; revoke with `operator revoke`)")
    sp.add_argument("name")
    sp.add_argument("--hours", type=positive, metavar="H",
                    help=f"lifetime (default {OPERATOR_CERT_HOURS}, or "
                         "$AEGIS_OPERATOR_CERT_HOURS; at most 168)")
    sp.add_argument("--out", default=".", help="directory for the key and certificate")
    sp.add_argument("--approve", action="store_true", help="may approve or reject held "
                    "recovery jobs and approve or deny access requests in the console "
                    "(default: read-only console)")
    sp.add_argument("--group", action="append", metavar="GROUP", help="a group the access "
                    "policy sees for this operator when it approves from the console "
                    "(repeatable)")
    sp.set_defaults(func=cmd_operator_cert_issue)
