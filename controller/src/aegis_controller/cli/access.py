"""``aegis-controller access``: just-in-time access.

On a user's machine (over HTTPS, with the user's JSON Web Token from the identity
provider): ``access request SERVICE --ttl 15m --reason "…"``, ``access approve ID``,
``access deny ID --reason "…"``, ``access revoke ID``, ``access list``, ``access show ID``.
For a service of kind ssh, ``request`` sends ``--ssh-key ~/.ssh/id_ed25519.pub`` and
``request`` / ``show`` save the grant's certificate with ``--ssh-cert-out FILE``.
The controller's address is ``--url`` / ``AEGIS_CONTROLLER_URL``, its CA ``--ca`` /
``AEGIS_CONTROLLER_CA``; the token is read from ``--token-file`` /
``AEGIS_ACCESS_TOKEN_FILE``, else ``AEGIS_ACCESS_TOKEN`` (never from the command line,
which other users can read).

On the controller (its state): ``access policy set FILE``, ``access policy show``,
``access requests`` (every request).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from aegis_protocol import routes
from aegis_protocol.access import parse_duration

from ..domain import open_controller
from ..settings import Settings
from .conventions import EXIT_OK, InputError, default_actor, print_json, read_input


def duration(text: str) -> int:
    try:
        return parse_duration(text, "--ttl")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _token(args: argparse.Namespace) -> str:
    path = args.token_file or os.environ.get("AEGIS_ACCESS_TOKEN_FILE")
    if path:
        try:
            token = Path(path).read_text().strip()
        except OSError as e:
            raise InputError(f"--token-file {path}: {e.strerror}") from None
        if not token:
            raise InputError(f"--token-file {path}: the file is empty")
        return token
    token = os.environ.get("AEGIS_ACCESS_TOKEN", "").strip()
    if not token:
        raise InputError("no token: give --token-file FILE (or AEGIS_ACCESS_TOKEN_FILE, or "
                         "AEGIS_ACCESS_TOKEN) with the JSON Web Token from your identity "
                         "provider, e.g. `bao read -field=token identity/oidc/token/ROLE`")
    return token


def _call(args: argparse.Namespace, method: str, path: str,
          body: dict[str, Any] | None = None) -> Any:
    url = args.url or os.environ.get("AEGIS_CONTROLLER_URL")
    if not url:
        raise InputError("no controller: give --url https://HOST:PORT (or "
                         "AEGIS_CONTROLLER_URL)")
    ca = args.ca or os.environ.get("AEGIS_CONTROLLER_CA")
    headers = {"Authorization": f"Bearer {_token(args)}"}
    import httpx  # the other commands never need it: they start quicker

    try:
        with httpx.Client(base_url=url, verify=ca or True, timeout=30) as client:
            answer = client.request(method, path, json=body, headers=headers)
    except httpx.HTTPError as e:
        raise InputError(f"controller {url}: {e}") from None
    if answer.status_code >= 400:
        try:
            detail = answer.json().get("detail", answer.text)
        except ValueError:
            detail = answer.text
        raise InputError(f"refused ({answer.status_code}): {detail}")
    return answer.json()


def cmd_access_request(args: argparse.Namespace, settings: Settings) -> int:
    body = {"service": args.service, "ttl": args.ttl, "reason": args.reason}
    if args.node:
        body["node"] = args.node
    if args.ssh_key:
        body["ssh_public_key"] = read_input(args.ssh_key).strip()
    state = _call(args, "POST", routes.ACCESS, body)
    _save_certificate(args, state)
    print_json(state)
    return EXIT_OK


def _save_certificate(args: argparse.Namespace, state: dict[str, Any]) -> None:
    """Write the grant's SSH certificate to ``--ssh-cert-out`` when it has one."""
    if not getattr(args, "ssh_cert_out", None) or not state.get("ssh"):
        return
    out = Path(args.ssh_cert_out)
    try:
        out.write_text(state["ssh"]["certificate"].strip() + "\n")
    except OSError as err:
        raise InputError(f"--ssh-cert-out {out}: cannot write it "
                         f"({err.strerror or err})") from None


def cmd_access_decide(args: argparse.Namespace, settings: Settings) -> int:
    print_json(_call(args, "POST", routes.access_one(args.request_id, args.verb),
                     {"reason": args.reason or ""}))
    return EXIT_OK


def cmd_access_list(args: argparse.Namespace, settings: Settings) -> int:
    for item in _call(args, "GET", routes.ACCESS):
        print_json(item)
    return EXIT_OK


def cmd_access_show(args: argparse.Namespace, settings: Settings) -> int:
    state = _call(args, "GET", routes.access_one(args.request_id))
    _save_certificate(args, state)
    print_json(state)
    return EXIT_OK


def cmd_access_policy_set(args: argparse.Namespace, settings: Settings) -> int:
    text = read_input(args.file)
    print_json(open_controller(settings).access.set_policy(text, default_actor()))
    return EXIT_OK


def cmd_access_requests(args: argparse.Namespace, settings: Settings) -> int:
    for state in open_controller(settings).access.visible(None):
        print_json(state.model_dump(mode="json"))
    return EXIT_OK


def cmd_access_policy_show(args: argparse.Namespace, settings: Settings) -> int:
    print_json(open_controller(settings).access.current_policy())
    return EXIT_OK


def _client_options(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--url", help="the controller, https://HOST:PORT (default "
                    "$AEGIS_CONTROLLER_URL)")
    sp.add_argument("--ca", metavar="FILE", help="the controller's CA certificate (default "
                    "$AEGIS_CONTROLLER_CA, else the system's)")
    sp.add_argument("--token-file", metavar="FILE", help="your JSON Web Token (default "
                    "$AEGIS_ACCESS_TOKEN_FILE, else $AEGIS_ACCESS_TOKEN)")


def _cert_out(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--ssh-cert-out", metavar="FILE", help="save a granted ssh request's "
                    "certificate here (e.g. ~/.ssh/id_ed25519-cert.pub)")


def _register_access(groups: argparse._SubParsersAction) -> None:
    access = groups.add_parser("access", help="just-in-time access to a service (users: "
                               "request, approve, deny, revoke, list; operators: policy)")
    verbs = access.add_subparsers(dest="verb", required=True, metavar="VERB")
    sp = verbs.add_parser("request", help="ask for SERVICE of the access policy for a while")
    sp.add_argument("service")
    sp.add_argument("--ttl", type=duration, required=True, help="how long, e.g. 15m")
    sp.add_argument("--reason", required=True, help="why (recorded on the ledger)")
    sp.add_argument("--node", help="only this node of the service's nodes")
    sp.add_argument("--ssh-key", metavar="FILE", help="a service of kind ssh: your OpenSSH "
                    "public key (e.g. ~/.ssh/id_ed25519.pub), signed at the grant")
    _cert_out(sp)
    _client_options(sp)
    sp.set_defaults(func=cmd_access_request)
    for verb, text in (("approve", "approve a pending request (an approver; not your own)"),
                       ("deny", "deny a pending request (an approver)"),
                       ("revoke", "end a request or grant now (its requester or an "
                                  "approver)")):
        sp = verbs.add_parser(verb, help=text)
        sp.add_argument("request_id")
        sp.add_argument("--reason", required=verb == "deny", help="why (recorded)")
        _client_options(sp)
        sp.set_defaults(func=cmd_access_decide, verb=verb)
    sp = verbs.add_parser("list", help="the requests you made or may approve")
    _client_options(sp)
    sp.set_defaults(func=cmd_access_list)
    sp = verbs.add_parser("show", help="one request")
    sp.add_argument("request_id")
    _cert_out(sp)
    _client_options(sp)
    sp.set_defaults(func=cmd_access_show)
    verbs.add_parser("requests", help="every request, newest first (on the controller: "
                     "its state)").set_defaults(func=cmd_access_requests)
    policy = verbs.add_parser("policy", help="the access policy (on the controller)")
    pverbs = policy.add_subparsers(dest="policy_verb", required=True, metavar="VERB")
    sp = pverbs.add_parser("set", help="check FILE (YAML) and make it the policy in force; "
                           "a refused file changes nothing")
    sp.add_argument("file")
    sp.set_defaults(func=cmd_access_policy_set)
    pverbs.add_parser("show", help="the policy in force").set_defaults(
        func=cmd_access_policy_show)
