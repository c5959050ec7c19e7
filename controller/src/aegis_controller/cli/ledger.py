"""``aegis-controller ledger ...``: append, show, checkpoint and verify the audit ledger."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ..ledger import APPENDABLE, load_verifier, open_ledger
from ..settings import Settings
from .conventions import (
    EXIT_FAILED,
    EXIT_OK,
    InputError,
    default_actor,
    env_int,
    positive,
    print_json,
)

log = logging.getLogger("aegis_controller.cli")


def cmd_ledger_append(args: argparse.Namespace, settings: Settings) -> int:
    raw = sys.stdin.read() if args.json == "-" else args.json
    try:
        body = json.loads(raw)
    except json.JSONDecodeError as err:
        raise InputError(f"--json is not valid JSON ({err}): pass an object, e.g. "
                         """--json '{"reason": "manual test"}'""") from None
    every = args.checkpoint_every or env_int("AEGIS_LEDGER_CHECKPOINT_EVERY")
    ledger = open_ledger(settings, write=True, checkpoint_every=every)
    record = ledger.append(args.kind, args.subject, body, actor=args.actor or default_actor())
    print_json(record.to_dict())
    return EXIT_OK


def cmd_ledger_show(args: argparse.Namespace, settings: Settings) -> int:
    ledger = open_ledger(settings, write=False)
    records = ledger.last(args.last) if args.last else ledger.records()
    for record in records:
        print_json(record.to_dict())
    return EXIT_OK


def cmd_ledger_checkpoint(args: argparse.Namespace, settings: Settings) -> int:
    ledger = open_ledger(settings, write=True)
    record, anchor = ledger.checkpoint()
    print_json({"checkpoint": record.to_dict(),
                 "anchor": anchor.to_dict() if anchor else None,
                 "anchor_path": str(settings.anchor_path)})
    return EXIT_OK


def _tail(unanchored: int) -> str:
    if not unanchored:
        return "unanchored tail: 0 records"
    return (f"unanchored tail: {unanchored} records after the last signed head (their "
            "deletion would not be detected until the next seal or `ledger checkpoint`)")


def cmd_ledger_verify(args: argparse.Namespace, settings: Settings) -> int:
    verifier = load_verifier(Path(args.public_key) if args.public_key else settings.public_key)
    ledger = open_ledger(settings, write=False)
    if args.no_anchor:
        ledger.anchor_path = None
    result = ledger.verify(verifier)
    if args.json:
        print_json(result.to_dict())
    elif result.ok:
        head = result.head or {"seq": 0, "hash": "-"}
        where = (f"anchor at seq {result.anchor['seq']} matches" if result.anchor else
                 "no anchor checked" if args.no_anchor else
                 "no anchor yet (none is written before the first checkpoint)")
        print(f"ledger OK: {result.count} records, {result.checkpoints} checkpoints, head seq "
              f"{head['seq']} hash {head['hash'][:16]}..., key {result.key_id}; {where}; "
              f"{_tail(result.unanchored)}")
    else:
        at = f" at seq {result.first_bad_seq}" if result.first_bad_seq else ""
        print(f"ledger verification FAILED{at}: {result.problem}: {result.detail} "
              f"({result.count} records before it verified; {_tail(result.unanchored)})")
    if not result.ok:
        log.warning("ledger verification failed", extra={
            "problem": str(result.problem), "first_bad_seq": result.first_bad_seq})
    return EXIT_OK if result.ok else EXIT_FAILED


def _register_ledger(groups: argparse._SubParsersAction) -> None:
    ledger = groups.add_parser("ledger", help="the audit ledger: append, show, checkpoint, verify")
    verbs = ledger.add_subparsers(dest="verb", required=True, metavar="VERB")

    sp = verbs.add_parser("verify", help="check every record and the anchor (exit 1 on failure)")
    sp.add_argument("--public-key", help="ledger public key PEM (default <state>/keys/ledger.pub)")
    sp.add_argument("--no-anchor", action="store_true",
                    help="skip the anchor (e.g. verifying a copy of the database alone)")
    sp.add_argument("--json", action="store_true", help="print the structured result as JSON")
    sp.set_defaults(func=cmd_ledger_verify)

    sp = verbs.add_parser("show", help="print records as JSON lines, oldest first")
    sp.add_argument("--last", type=positive, metavar="N", help="only the last N records")
    sp.set_defaults(func=cmd_ledger_show)

    sp = verbs.add_parser("append", help="append one record (operators and tests)")
    sp.add_argument("--kind", required=True, help=f"one of: {', '.join(APPENDABLE)}")
    sp.add_argument("--subject", default="", help="node id, or empty")
    sp.add_argument("--json", required=True, metavar="BODY",
                    help="the body, a JSON object ('-' reads it from stdin)")
    sp.add_argument("--actor", help="who did it (default operator:<user>)")
    sp.add_argument("--checkpoint-every", type=positive, metavar="N",
                    help="checkpoint every N seqs (default 1000, or "
                         "$AEGIS_LEDGER_CHECKPOINT_EVERY)")
    sp.set_defaults(func=cmd_ledger_append)

    sp = verbs.add_parser("checkpoint", help="write a checkpoint now and move the anchor to it")
    sp.set_defaults(func=cmd_ledger_checkpoint)
