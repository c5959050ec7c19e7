"""``aegis-controller``: the Aegis controller from the command line.

Commands come in groups, one module per noun (:mod:`.ledger`, :mod:`.keys`, :mod:`.nodes`,
:mod:`.orders`, :mod:`.serve`, :mod:`.backup`, :mod:`.recovery`, :mod:`.access`; shared
conventions in :mod:`.conventions`):
each group registers its sub-commands in one ``_register_<group>`` function and each command is one
``cmd_<group>_<verb>(args, settings) -> exit code`` function. Where things live is
:class:`aegis_controller.settings.Settings`; the domain is
:func:`aegis_controller.domain.open_controller`.

Exit codes: 0 ok; 1 verification failed; 2 bad input or an unusable database, key or
anchor file (the message says what and how to fix it); 3 an unexpected internal error
(the JSON log line on stderr carries it). Results go to stdout as JSON, except where a
human summary is the point (``ledger verify`` without ``--json``); logs are JSON lines
on stderr.

Where things live (each overridable by option or environment variable):

* state directory: ``--state-dir`` / ``AEGIS_CONTROLLER_STATE_DIR``
  (default ``/var/lib/aegis/controller``)
* database: ``--db URL`` / ``AEGIS_CONTROLLER_DB`` (default SQLite
  ``<state>/controller.db``; PostgreSQL: ``postgresql+psycopg://user@host/db``)
* ledger keys: ``<state>/keys/ledger.key`` (0600) and ``<state>/keys/ledger.pub``
* ledger anchor: ``--anchor`` / ``AEGIS_LEDGER_ANCHOR`` (default
  ``<state>/ledger.anchor.json``)
* Vault-compatible server that response-wraps bootstrap tokens (optional):
  ``token issue --vault-addr`` / ``BAO_ADDR`` / ``VAULT_ADDR`` (see ``vault_wrap``)
* leased secrets gated on trust (optional): ``serve --secrets-token-file`` /
  ``AEGIS_SECRETS_TOKEN_FILE`` and the other ``--secrets-*`` options (see
  ``aegis_controller.secrets.settings``); ``node secrets-role``, ``node secrets``
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable

from aegis_protocol.files import PrivateKeyError

from .. import logs
from ..db import DatabaseError
from ..errors import DomainError
from ..ledger import LedgerError
from ..settings import DEFAULT_STATE_DIR, Settings
from .access import _register_access
from .backup import _register_backup
from .conventions import EXIT_BAD_INPUT, EXIT_INTERNAL, InputError
from .keys import _register_keys, _register_operator_cert
from .ledger import _register_ledger
from .nodes import _register_nodes, _register_profile, _register_token
from .operators import _register_operator
from .orders import _register_incidents, _register_orders
from .recovery import _register_recovery
from .segment import _register_segment
from .serve import _register_serve

__all__ = ["build_parser", "main"]

log = logging.getLogger("aegis_controller.cli")

_GROUPS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    _register_ledger, _register_keys, _register_serve, _register_incidents, _register_orders,
    _register_operator_cert, _register_operator, _register_profile, _register_token,
    _register_nodes, _register_backup, _register_recovery, _register_access,
    _register_segment)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aegis-controller", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state-dir", help="controller state directory "
                        f"(default $AEGIS_CONTROLLER_STATE_DIR or {DEFAULT_STATE_DIR})")
    parser.add_argument("--db", metavar="URL", help="database URL (default "
                        "$AEGIS_CONTROLLER_DB or sqlite:///<state>/controller.db)")
    parser.add_argument("--anchor", metavar="FILE", help="ledger anchor file (default "
                        "$AEGIS_LEDGER_ANCHOR or <state>/ledger.anchor.json)")
    parser.add_argument("--log-level", default="warning",
                        choices=["debug", "info", "warning", "error"])
    groups = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")
    for register in _GROUPS:
        register(groups)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Outside systemd (UMask=0077) too: the state directory, database and keys this
    # process creates are its own (0700 directories, 0600 files).
    os.umask(0o077)
    args = build_parser().parse_args(argv)
    logs.setup(getattr(logging, args.log_level.upper()))
    try:
        settings = Settings.resolve(args.state_dir, args.db, args.anchor)
        return int(args.func(args, settings))
    except (InputError, DomainError, LedgerError, DatabaseError, PrivateKeyError) as err:
        print(f"aegis-controller: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130
    except Exception as err:
        log.exception("internal error")
        print(f"aegis-controller: internal error: {type(err).__name__}: {err}", file=sys.stderr)
        return EXIT_INTERNAL
