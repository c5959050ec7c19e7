"""``aegis-controller backup``, ``restore`` and ``backup-identity``: the controller's state
as one age-encrypted archive (see :mod:`aegis_controller.backup` and
:mod:`aegis_controller.restore`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import backup
from ..settings import Settings
from .conventions import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, print_json


def _failed(err: backup.BackupError) -> int:
    print(f"aegis-controller: error: {err}", file=sys.stderr)
    return EXIT_FAILED if isinstance(err, backup.LedgerRefused) else EXIT_BAD_INPUT


def cmd_backup(args: argparse.Namespace, settings: Settings) -> int:
    try:
        to = backup.recipients(args.recipient or [], [Path(f) for f in args.recipients_file or []])
        manifest = backup.backup(settings, Path(args.out), to, force=args.force)
    except backup.BackupError as err:
        return _failed(err)
    backup.progress(f"backup written: {args.out}")
    print_json({"archive": args.out, "format": manifest["format"],
                "database": manifest["database"], "created": manifest["created"],
                "ledger_key_id": manifest["ledger_key_id"], "recipients": len(to),
                "members": sorted(manifest["members"])})
    return EXIT_OK


def cmd_restore(args: argparse.Namespace, settings: Settings) -> int:
    try:
        keys = backup.identities(Path(args.identity))
        done = backup.restore(settings, Path(args.archive), keys, force=args.force,
                               pinned_key=Path(args.public_key) if args.public_key else None)
    except backup.BackupError as err:
        return _failed(err)
    backup.progress(f"restored into {done['state_dir']}; the ledger verifies "
                    f"({done['records']} records, key {done['key_id']})")
    print_json(done)
    return EXIT_OK


def cmd_backup_identity(args: argparse.Namespace, settings: Settings) -> int:
    try:
        recipient = backup.new_identity(Path(args.out))
    except backup.BackupError as err:
        return _failed(err)
    print_json({"identity": args.out, "recipient": recipient})
    return EXIT_OK


def _register_backup(groups: argparse._SubParsersAction) -> None:
    sp = groups.add_parser("backup", help="write the database, keys and ledger anchor as one "
                           "age-encrypted archive")
    sp.add_argument("--out", required=True, metavar="FILE", help="the archive to write (0600)")
    sp.add_argument("--recipient", action="append", metavar="KEY",
                    help="an age (age1...) or SSH public key to encrypt to (repeatable)")
    sp.add_argument("--recipients-file", action="append", metavar="FILE",
                    help="a file of recipients, one a line (repeatable)")
    sp.add_argument("--force", action="store_true", help="replace an existing --out file")
    sp.set_defaults(func=cmd_backup)

    sp = groups.add_parser("restore", help="restore an archive from `backup` into an empty "
                           "state directory (refused unless its ledger verifies)")
    sp.add_argument("archive")
    sp.add_argument("--identity", required=True, metavar="FILE",
                    help="age identity file (AGE-SECRET-KEY-1...) or SSH private key")
    sp.add_argument("--public-key", metavar="PEM", help="the ledger public key the archive "
                    "must carry (recommended: kept apart from the backups)")
    sp.add_argument("--force", action="store_true", help="restore over a non-empty state "
                    "directory, keeping it as <dir>.before-restore-<time>")
    sp.set_defaults(func=cmd_restore)

    sp = groups.add_parser("backup-identity", help="make an age key pair for backups (prints "
                           "the recipient; keep the identity file off the controller)")
    sp.add_argument("--out", required=True, metavar="FILE")
    sp.set_defaults(func=cmd_backup_identity)
