"""``aegis-controller serve``: the HTTPS API over mutual TLS, with the heartbeat watch."""

from __future__ import annotations

import argparse

from ..domain import open_controller
from ..secrets.settings import SecretsConfigError, SecretsSettings, add_options
from ..settings import Settings
from .conventions import EXIT_OK, InputError, positive


def cmd_serve_run(args: argparse.Namespace, settings: Settings) -> int:
    from ..api.connections import ConnectionLimits  # uvicorn: only for this command
    from ..api.serve import serve  # FastAPI and uvicorn: only for this command

    limits = ConnectionLimits(read_timeout=args.read_timeout, per_source=args.per_source,
                              max_connections=args.max_connections)
    try:
        secrets = SecretsSettings.resolve(
            token_file=args.secrets_token_file, addr=args.vault_addr, ca_file=args.vault_ca,
            approle_mount=args.secrets_approle_mount, prefix=args.secrets_prefix,
            wrap_ttl=args.secrets_wrap_ttl, verify_dsn=args.secrets_verify_dsn)
    except SecretsConfigError as err:
        raise InputError(str(err)) from None
    serve(open_controller(settings), settings.state_dir, args.host, args.port,
          args.heartbeat_deadline, limits, args.ledger_seal_interval, secrets)
    return EXIT_OK


def _register_serve(groups: argparse._SubParsersAction) -> None:
    sp = groups.add_parser("serve", help="run the HTTPS API (mutual TLS for agents)")
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("--port", type=positive, default=8443)
    sp.add_argument("--heartbeat-deadline", type=positive, default=90, metavar="S",
                    help="seconds without a heartbeat before a node is suspect (default 90)")
    sp.add_argument("--ledger-seal-interval", type=positive, default=60, metavar="S",
                    help="seconds between ledger seals (a checkpoint and the signed head "
                         "outside the database, when the head moved; also at shutdown; "
                         "default 60)")
    sp.add_argument("--read-timeout", type=positive, default=15, metavar="S",
                    help="seconds a client has to send a whole request, head and body; "
                         "slower connections are closed (default 15)")
    sp.add_argument("--per-source", type=positive, default=64, metavar="N",
                    help="open connections allowed from one address (default 64)")
    sp.add_argument("--max-connections", type=positive, default=4096, metavar="N",
                    help="open connections in all; keep it well under the unit's "
                         "LimitNOFILE (default 4096)")
    add_options(sp)
    sp.set_defaults(func=cmd_serve_run)
