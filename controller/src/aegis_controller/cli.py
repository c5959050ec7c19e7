"""``aegis-controller``: the Aegis controller from the command line.

Commands come in groups (``ledger ...``, ``keys ...``; more later): each group registers
its sub-commands in one ``_register_<group>`` function and each command is one
``cmd_<group>_<verb>(args, settings) -> exit code`` function.

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
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, get_args

from aegis_protocol.orders import OrderKind

from . import logs

if TYPE_CHECKING:
    from .api.service import Controller
    from .ledger import Ledger

log = logging.getLogger("aegis_controller.cli")

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERNAL = 0, 1, 2, 3
DEFAULT_STATE_DIR = Path("/var/lib/aegis/controller")


@dataclass(frozen=True)
class Settings:
    state_dir: Path
    db_url: str
    anchor_path: Path

    @property
    def key_dir(self) -> Path:
        return self.state_dir / "keys"

    @property
    def private_key(self) -> Path:
        from .ledger.keys import PRIVATE_NAME

        return self.key_dir / PRIVATE_NAME

    @property
    def public_key(self) -> Path:
        from .ledger.keys import PUBLIC_NAME

        return self.key_dir / PUBLIC_NAME

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Settings:
        from .db import default_url

        state = Path(args.state_dir or os.environ.get("AEGIS_CONTROLLER_STATE_DIR")
                     or DEFAULT_STATE_DIR)
        url = args.db or os.environ.get("AEGIS_CONTROLLER_DB") or default_url(state)
        anchor = Path(args.anchor or os.environ.get("AEGIS_LEDGER_ANCHOR")
                      or state / "ledger.anchor.json")
        return cls(state_dir=state, db_url=url, anchor_path=anchor)


class InputError(Exception):
    """A command-line value is wrong; exit 2."""


def _print_json(doc: object) -> None:
    print(json.dumps(doc, ensure_ascii=False))


# -- ledger ------------------------------------------------------------------------------
def open_ledger(settings: Settings, *, write: bool,
                checkpoint_every: int | None = None) -> Ledger:
    """The ledger ``settings`` name (with its signing key when ``write``); also used by the
    aegis.fleet.audit callback plugin."""
    from . import db
    from .ledger import DEFAULT_CHECKPOINT_EVERY, Ledger, load_signer

    signer = load_signer(settings.private_key) if write else None
    engine = db.open_engine(settings.db_url, must_exist=not write)
    if write:
        db.upgrade(engine)
    return Ledger(engine, signer=signer, anchor_path=settings.anchor_path,
                  checkpoint_every=checkpoint_every or DEFAULT_CHECKPOINT_EVERY)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be 1 or more")
    return value


def _default_actor() -> str:
    try:
        return f"operator:{getpass.getuser()}"
    except (KeyError, OSError):
        return f"operator:uid{os.getuid()}"


def cmd_ledger_append(args: argparse.Namespace, settings: Settings) -> int:
    raw = sys.stdin.read() if args.json == "-" else args.json
    try:
        body = json.loads(raw)
    except json.JSONDecodeError as err:
        raise InputError(f"--json is not valid JSON ({err}): pass an object, e.g. "
                         """--json '{"reason": "manual test"}'""") from None
    every = args.checkpoint_every or _env_int("AEGIS_LEDGER_CHECKPOINT_EVERY")
    ledger = open_ledger(settings, write=True, checkpoint_every=every)
    record = ledger.append(args.kind, args.subject, body, actor=args.actor or _default_actor())
    _print_json(record.to_dict())
    return EXIT_OK


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if not value:
        return None
    try:
        return _positive(value)
    except argparse.ArgumentTypeError as err:
        raise InputError(f"environment variable {name}: {err}") from None


def cmd_ledger_show(args: argparse.Namespace, settings: Settings) -> int:
    ledger = open_ledger(settings, write=False)
    records = ledger.last(args.last) if args.last else ledger.records()
    for record in records:
        _print_json(record.to_dict())
    return EXIT_OK


def cmd_ledger_checkpoint(args: argparse.Namespace, settings: Settings) -> int:
    ledger = open_ledger(settings, write=True)
    record, anchor = ledger.checkpoint()
    _print_json({"checkpoint": record.to_dict(),
                 "anchor": anchor.to_dict() if anchor else None,
                 "anchor_path": str(settings.anchor_path)})
    return EXIT_OK


def cmd_ledger_verify(args: argparse.Namespace, settings: Settings) -> int:
    from .ledger import load_verifier

    verifier = load_verifier(Path(args.public_key) if args.public_key else settings.public_key)
    ledger = open_ledger(settings, write=False)
    if args.no_anchor:
        ledger.anchor_path = None
    result = ledger.verify(verifier)
    if args.json:
        _print_json(result.to_dict())
    elif result.ok:
        head = result.head or {"seq": 0, "hash": "-"}
        where = (f"anchor at seq {result.anchor['seq']} matches" if result.anchor else
                 "no anchor checked" if args.no_anchor else
                 "no anchor yet (none is written before the first checkpoint)")
        print(f"ledger OK: {result.count} records, {result.checkpoints} checkpoints, head seq "
              f"{head['seq']} hash {head['hash'][:16]}..., key {result.key_id}; {where}")
    else:
        at = f" at seq {result.first_bad_seq}" if result.first_bad_seq else ""
        print(f"ledger verification FAILED{at}: {result.problem}: {result.detail} "
              f"({result.count} records before it verified)")
    if not result.ok:
        log.warning("ledger verification failed", extra={
            "problem": str(result.problem), "first_bad_seq": result.first_bad_seq})
    return EXIT_OK if result.ok else EXIT_FAILED


def _register_ledger(groups: argparse._SubParsersAction) -> None:
    from .ledger import APPENDABLE

    ledger = groups.add_parser("ledger", help="the audit ledger: append, show, checkpoint, verify")
    verbs = ledger.add_subparsers(dest="verb", required=True, metavar="VERB")

    sp = verbs.add_parser("verify", help="check every record and the anchor (exit 1 on failure)")
    sp.add_argument("--public-key", help="ledger public key PEM (default <state>/keys/ledger.pub)")
    sp.add_argument("--no-anchor", action="store_true",
                    help="skip the anchor (e.g. verifying a copy of the database alone)")
    sp.add_argument("--json", action="store_true", help="print the structured result as JSON")
    sp.set_defaults(func=cmd_ledger_verify)

    sp = verbs.add_parser("show", help="print records as JSON lines, oldest first")
    sp.add_argument("--last", type=_positive, metavar="N", help="only the last N records")
    sp.set_defaults(func=cmd_ledger_show)

    sp = verbs.add_parser("append", help="append one record (operators and tests)")
    sp.add_argument("--kind", required=True, help=f"one of: {', '.join(APPENDABLE)}")
    sp.add_argument("--subject", default="", help="node id, or empty")
    sp.add_argument("--json", required=True, metavar="BODY",
                    help="the body, a JSON object ('-' reads it from stdin)")
    sp.add_argument("--actor", help="who did it (default operator:<user>)")
    sp.add_argument("--checkpoint-every", type=_positive, metavar="N",
                    help="checkpoint every N seqs (default 1000, or "
                         "$AEGIS_LEDGER_CHECKPOINT_EVERY)")
    sp.set_defaults(func=cmd_ledger_append)

    sp = verbs.add_parser("checkpoint", help="write a checkpoint now and move the anchor to it")
    sp.set_defaults(func=cmd_ledger_checkpoint)


# -- keys --------------------------------------------------------------------------------
def cmd_keys_init(args: argparse.Namespace, settings: Settings) -> int:
    from .ledger import init_keys

    private, public, key_id = init_keys(settings.key_dir, force=args.force)
    _print_json({"private_key": str(private), "public_key": str(public), "key_id": key_id})
    return EXIT_OK


def cmd_keys_public(args: argparse.Namespace, settings: Settings) -> int:
    from .ledger import load_signer, load_verifier

    if settings.public_key.exists():
        verifier = load_verifier(settings.public_key)
    else:
        verifier = load_signer(settings.private_key).verifier
    sys.stdout.write(verifier.public_pem())
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


# -- service, tokens, nodes ----------------------------------------------------------------
def _controller(settings: Settings) -> Controller:
    from .api.serve import build

    return build(settings.state_dir, settings.db_url, settings.anchor_path,
                 settings.private_key)


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from .api.serve import serve

    serve(_controller(settings), settings.state_dir, args.host, args.port,
          args.heartbeat_deadline)
    return EXIT_OK


def cmd_incidents(args: argparse.Namespace, settings: Settings) -> int:
    for incident in _controller(settings).incidents(args.node):
        _print_json(incident)
    return EXIT_OK


def cmd_orders(args: argparse.Namespace, settings: Settings) -> int:
    for order in _controller(settings).orders(args.node):
        _print_json(order)
    return EXIT_OK


def cmd_order_create(args: argparse.Namespace, settings: Settings) -> int:
    from .api.service import Refused

    extra: dict[str, object] = {}
    for item in args.arg:
        key, sep, value = item.partition("=")
        if not sep:
            raise InputError(f"--arg {item!r}: write KEY=VALUE, e.g. --arg edge='a -> b tcp/22'")
        extra[key] = int(value) if value.isdigit() else value
    try:
        signed = _controller(settings).create_order(args.node, args.kind, extra,
                                                    _default_actor(), args.lifetime)
    except Refused as err:
        raise InputError(err.message) from None
    _print_json(signed.model_dump(mode="json"))
    return EXIT_OK


def cmd_operator_cert(args: argparse.Namespace, settings: Settings) -> int:
    from .durable import write_atomically

    key, cert = _controller(settings).ca.operator_cert(args.name)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomically(out / f"operator-{args.name}.key", key, mode=0o600)
    write_atomically(out / f"operator-{args.name}.pem", cert, mode=0o644)
    _print_json({"key": str(out / f"operator-{args.name}.key"),
                 "certificate": str(out / f"operator-{args.name}.pem")})
    return EXIT_OK


def cmd_profile_set(args: argparse.Namespace, settings: Settings) -> int:
    from aegis_protocol.attestation import GOLDEN_SCHEMA, ExpectedProfile, profile_from_golden

    from .api.service import Refused

    try:
        data = json.loads(Path(args.file).read_text())
        if isinstance(data, dict) and data.get("schema") == GOLDEN_SCHEMA:
            profile = profile_from_golden(data)
        else:
            profile = ExpectedProfile.model_validate(data)
    except (OSError, ValueError) as err:  # pydantic's ValidationError is a ValueError
        raise InputError(f"{args.file}: neither an expected profile nor a golden record "
                         f"({err})") from None
    try:
        controller = _controller(settings)
        if args.pin_bpf:
            profile.bpf.update(_reported_bpf(controller.node(args.node), args.node))
        controller.set_profile(args.node, profile, _default_actor())
    except Refused as err:
        raise InputError(err.message) from None
    if args.pin_bpf:
        _print_json({"bpf": profile.bpf})
    return EXIT_OK


def _reported_bpf(node: dict, node_id: str) -> dict[str, str]:
    """The BPF programs and attach modes of the node's last attestation."""
    from aegis_protocol.attestation import Measurement, bpf_summary

    if not node.get("measurement"):
        raise InputError(f"node {node_id!r} has not attested yet: no BPF programs to pin "
                         "(wait for its first attestation, or leave out --pin-bpf)")
    pinned = bpf_summary(Measurement.model_validate_json(node["measurement"]).bpf)
    if not pinned:
        raise InputError(f"node {node_id!r} reported no Aegis BPF programs: is its agent "
                         "enforcing? (aegis-agent status on the node)")
    return pinned


def cmd_token_issue(args: argparse.Namespace, settings: Settings) -> int:
    from .api.service import Refused
    from .vault_wrap import VaultError, VaultSettings, wrap_bootstrap

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
        token = _controller(settings).issue_token(args.node, args.ttl, actor=_default_actor(),
                                                  wrap=wrap)
    except Refused as err:
        raise InputError(err.message) from None
    except VaultError as err:
        raise InputError(f"{err} (no token was issued)") from None
    if vault is not None:
        print(f"response-wrapped by {vault.addr}: the node's agent unwraps it there once "
              "(controller.vault.url in its config)", file=sys.stderr)
    print(token)  # the secret itself goes to stdout only, never to a log
    return EXIT_OK


def cmd_nodes(args: argparse.Namespace, settings: Settings) -> int:
    for node in _controller(settings).nodes():
        _print_json(node)
    return EXIT_OK


def cmd_node_show(args: argparse.Namespace, settings: Settings) -> int:
    from .api.service import Refused

    ctl = _controller(settings)
    try:
        node = ctl.node(args.node)
    except Refused as err:
        raise InputError(err.message) from None
    _print_json({**node, "events": ctl.event_count(args.node)})
    return EXIT_OK


def _register_service(groups: argparse._SubParsersAction) -> None:
    sp = groups.add_parser("serve", help="run the HTTPS API (mutual TLS for agents)")
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("--port", type=_positive, default=8443)
    sp.add_argument("--heartbeat-deadline", type=_positive, default=90, metavar="S",
                    help="seconds without a heartbeat before a node is suspect (default 90)")
    sp.set_defaults(func=cmd_serve)
    sp = groups.add_parser("incidents", help="incidents raised from agents' events")
    sp.add_argument("--node")
    sp.set_defaults(func=cmd_incidents)
    sp = groups.add_parser("orders", help="list orders and their acknowledgments")
    sp.add_argument("--node")
    sp.set_defaults(func=cmd_orders)
    order = groups.add_parser("order", help="signed orders to a node")
    verbs = order.add_subparsers(dest="verb", required=True, metavar="VERB")
    sp = verbs.add_parser("create", help="sign and queue an order for NODE")
    sp.add_argument("node")
    sp.add_argument("kind", choices=get_args(OrderKind))
    sp.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE")
    sp.add_argument("--lifetime", type=_positive, default=300, help="seconds (default 300)")
    sp.set_defaults(func=cmd_order_create)
    sp = groups.add_parser("operator-cert", help="issue an operator client certificate")
    sp.add_argument("name")
    sp.add_argument("--out", default=".", help="directory for the key and certificate")
    sp.set_defaults(func=cmd_operator_cert)
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
    token = groups.add_parser("token", help="one-time bootstrap tokens")
    verbs = token.add_subparsers(dest="verb", required=True, metavar="VERB")
    sp = verbs.add_parser("issue", help="issue a token for NODE (printed once)")
    sp.add_argument("node")
    sp.add_argument("--ttl", type=_positive, default=600, help="seconds (default 600)")
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
    groups.add_parser("nodes", help="list nodes and their trust state").set_defaults(
        func=cmd_nodes)
    node = groups.add_parser("node", help="one node")
    verbs = node.add_subparsers(dest="verb", required=True, metavar="VERB")
    sp = verbs.add_parser("show")
    sp.add_argument("node")
    sp.set_defaults(func=cmd_node_show)


# -- entry point ---------------------------------------------------------------------------
_GROUPS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    _register_ledger, _register_keys, _register_service)


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
    from .db import DatabaseError
    from .ledger import LedgerError

    args = build_parser().parse_args(argv)
    logs.setup(getattr(logging, args.log_level.upper()))
    try:
        return int(args.func(args, Settings.from_args(args)))
    except (InputError, LedgerError, DatabaseError) as err:
        print(f"aegis-controller: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130
    except Exception as err:
        log.exception("internal error")
        print(f"aegis-controller: internal error: {type(err).__name__}: {err}", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
