"""``aegis-controller serve``: the HTTPS API over mutual TLS, with the heartbeat watch."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..access.identity import MAX_LEEWAY, OidcConfigError, OidcSettings
from ..access.ssh_ca import DEFAULT_ROLE, SshCa, SshCaError, SshCaSettings
from ..attestation import LOST_EVENTS_THRESHOLD
from ..domain import open_controller
from ..recovery.engine import RecoveryWiring
from ..secrets.settings import SecretsConfigError, SecretsSettings, add_options
from ..settings import Settings
from .conventions import EXIT_OK, InputError, non_negative, positive


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
    try:
        oidc = OidcSettings.resolve(args.oidc_issuer, args.oidc_audience, args.oidc_ca_file,
                                    args.oidc_leeway, args.oidc_groups_claim,
                                    args.oidc_jwks_refetch)
    except OidcConfigError as err:
        raise InputError(str(err)) from None
    try:
        ssh_ca = SshCaSettings.resolve(mount=args.ssh_ca_mount, role=args.ssh_ca_role,
                                       token_file=args.ssh_ca_token_file,
                                       addr=args.vault_addr, ca_file=args.vault_ca,
                                       secrets_token_file=args.secrets_token_file)
    except SshCaError as err:
        raise InputError(str(err)) from None
    recovery = None
    if args.recovery_config:
        from .recovery import recovery_steps  # ansible-runner: only with recovery on

        command = token_command(settings)  # first: it sets what the steps' runs inherit
        rsettings, steps = recovery_steps(Path(args.recovery_config), settings)
        recovery = RecoveryWiring(rsettings, steps, command)
    controller = open_controller(settings)
    controller.attestation.lost_events_threshold = args.lost_events_threshold
    if ssh_ca is not None:
        controller.access.ssh_ca = SshCa(ssh_ca)
    serve(controller, settings.state_dir, args.host, args.port,
          args.heartbeat_deadline, limits, args.ledger_seal_interval, secrets, recovery,
          args.ledger_verify_interval, oidc)
    return EXIT_OK


def token_command(settings: Settings) -> list[str]:
    """What the recovery's enroll play runs on the control node for a node's one-time
    bootstrap token (the node id appended): this controller's own CLI on its state. The
    database URL reaches it through the environment, not the command line (it may hold a
    password, and command lines are visible to every user)."""
    os.environ["AEGIS_CONTROLLER_DB"] = settings.db_url
    return [sys.executable, "-m", "aegis_controller.cli", "--state-dir",
            str(settings.state_dir), "--anchor", str(settings.anchor_path), "token", "issue",
            "--no-wrap"]


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
    sp.add_argument("--lost-events-threshold", type=non_negative, default=LOST_EVENTS_THRESHOLD,
                    metavar="N", help="events a node may report lost between two heartbeats "
                    "(full ring buffers, spool past its bound) before it is suspect "
                    f"(default {LOST_EVENTS_THRESHOLD}; 0: any loss)")
    sp.add_argument("--ledger-verify-interval", type=non_negative, default=3600, metavar="S",
                    help="seconds between whole-ledger verifications in the server, shown "
                         "by the aegis_ledger_verify_* metrics (default 3600; 0: never)")
    sp.add_argument("--read-timeout", type=positive, default=15, metavar="S",
                    help="seconds a client has to send a whole request, head and body; "
                         "slower connections are closed (default 15)")
    sp.add_argument("--per-source", type=positive, default=64, metavar="N",
                    help="open connections allowed from one address (default 64)")
    sp.add_argument("--max-connections", type=positive, default=4096, metavar="N",
                    help="open connections in all; keep it well under the unit's "
                         "LimitNOFILE (default 4096)")
    add_options(sp)
    oidc = sp.add_argument_group("just-in-time access (users' JSON Web Tokens)")
    oidc.add_argument("--oidc-issuer", metavar="URL",
                      help="the OIDC issuer whose tokens users send (its iss claim; keys "
                           "from <URL>/.well-known/openid-configuration); default "
                           "$AEGIS_OIDC_ISSUER; without it the access routes refuse")
    oidc.add_argument("--oidc-audience", metavar="AUD",
                      help="the aud claim tokens must carry (default $AEGIS_OIDC_AUDIENCE)")
    oidc.add_argument("--oidc-ca-file", metavar="FILE",
                      help="CA bundle for the issuer's https (default $AEGIS_OIDC_CA_FILE, "
                           "else the system's)")
    oidc.add_argument("--oidc-leeway", type=int, default=None, metavar="S",
                      help=f"clock skew allowed, 0 to {MAX_LEEWAY} seconds (default 30)")
    oidc.add_argument("--oidc-groups-claim", metavar="CLAIM",
                      help="the claim listing the user's groups (default groups)")
    oidc.add_argument("--oidc-jwks-refetch", type=positive, default=None, metavar="S",
                      help="least seconds between two key fetches caused by an unknown key "
                           "id (default 30)")
    ssh = sp.add_argument_group("SSH user certificates of access grants to kind ssh services")
    ssh.add_argument("--ssh-ca-mount", metavar="PATH",
                     help="the SSH secrets engine that signs them (default "
                          "$AEGIS_SSH_CA_MOUNT; without it ssh services are refused)")
    ssh.add_argument("--ssh-ca-role", metavar="ROLE",
                     help=f"its role (default $AEGIS_SSH_CA_ROLE, else {DEFAULT_ROLE})")
    ssh.add_argument("--ssh-ca-token-file", metavar="FILE",
                     help="the token allowed to update PATH/sign/ROLE (default "
                          "$AEGIS_SSH_CA_TOKEN_FILE, else the secrets token file)")
    sp.add_argument("--recovery-config", metavar="FILE",
                    help="run the recovery engine with these settings (YAML: guard rails, "
                         "the steps' backend: runner with the Terraform root module, "
                         "playbooks and forensics recipient, or awx with AWX job templates; "
                         "see aegis_controller.recovery.settings); without it quarantined nodes "
                         "stay quarantined until an operator acts")
    sp.set_defaults(func=cmd_serve_run)
