"""``aegis-agent``: run the daemon, check its config, and talk to it over the control socket.

    aegis-agent run [--config FILE]
    aegis-agent check-config [FILE]
    aegis-agent status | edges | quarantine | release | confirm
    aegis-agent grant "10.0.0.0/24 -> 10.0.0.2 tcp/22" --ttl 600 --idle 60
    aegis-agent revoke "10.0.0.0/24 -> 10.0.0.2 tcp/22"
    aegis-agent events [--limit N] [--after SEQ] [--follow]
    aegis-agent deny-exec PATH | allow-exec PATH
    aegis-agent quarantine-cgroup CGROUP_DIR | release-cgroup CGROUP_DIR
    aegis-agent detach [--config FILE]      # with the daemon stopped: remove all enforcement
    aegis-agent segment --pin-dir DIR --iface IF attach|grant|...   # developer: no daemon

Each group registers its sub-commands in one ``_register_<group>``; a sub-command runs
``cmd_<group>_<verb>(args)`` (set with ``set_defaults(func=…)``).

Exit status: 0 done, 1 refused or failed (the message says why), 2 bad usage or config.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

from aegis_protocol.logs import setup as setup_logging

from .config import DEFAULT_PATH, ConfigError, ControlConfig, load_config
from .control import ControlError, call
from .segment_tool import register_segment


def _print(result: object) -> None:
    print(json.dumps(result, indent=2, default=str))


# -- daemon: run, check-config, detach ----------------------------------------------------
def cmd_daemon_run(args: argparse.Namespace) -> int:
    setup_logging()
    from .daemon import Agent

    return asyncio.run(Agent(load_config(args.config)).run())


def cmd_daemon_check_config(args: argparse.Namespace) -> int:
    path = args.file or args.config
    load_config(path)
    print(f"{path}: OK")
    return 0


def cmd_daemon_detach(args: argparse.Namespace) -> int:
    from .daemon import detach

    _print(detach(load_config(args.config)))
    return 0


def _register_daemon(groups: argparse._SubParsersAction) -> None:
    sp = groups.add_parser("run", help="run the daemon in the foreground (systemd: Type=notify)")
    sp.set_defaults(func=cmd_daemon_run)
    sp = groups.add_parser("check-config", help="validate a config file")
    sp.add_argument("file", nargs="?", type=Path)
    sp.set_defaults(func=cmd_daemon_check_config)
    sp = groups.add_parser("detach", help="remove every program, link and pin (daemon stopped)")
    sp.set_defaults(func=cmd_daemon_detach)


# -- control: requests to the running daemon ------------------------------------------------
def _socket_path(args: argparse.Namespace) -> Path:
    if args.socket:
        return args.socket
    if args.config.exists():
        return load_config(args.config).control.socket
    return ControlConfig().socket


def cmd_control_call(args: argparse.Namespace) -> int:
    """One request: the sub-command is the verb, its ``send`` arguments are the args."""
    request = {name: getattr(args, name) for name in args.send
               if getattr(args, name) is not None}
    _print(call(_socket_path(args), args.cmd, **request))
    return 0


def cmd_control_events(args: argparse.Namespace) -> int:
    path = _socket_path(args)
    after = args.after
    while True:
        kw = {"limit": args.limit} | ({"after": after} if after is not None else {})
        batch = call(path, "events", **kw)
        for ev in batch:
            print(json.dumps(ev, default=str), flush=True)
            after = ev["seq"]
        if not args.follow:
            return 0
        if after is None:
            after = -1
        time.sleep(0.5)


def _resolved(path: str) -> str:
    return str(Path(path).resolve())


def _register_control(groups: argparse._SubParsersAction) -> None:
    def verb(name: str, help_: str | None = None, *send: str) -> argparse.ArgumentParser:
        sp = groups.add_parser(name, help=help_)
        sp.set_defaults(func=cmd_control_call, send=send)
        return sp

    for name in ("status", "edges", "quarantine", "release"):
        verb(name)
    verb("confirm", "keep the segment policy applied at start (segment.confirm_seconds): "
         "unconfirmed, it is reverted")
    sp = verb("grant", "allow an edge: 'SRC -> DST PROTO/PORT'", "edge", "ttl", "idle")
    sp.add_argument("edge")
    sp.add_argument("--ttl", type=float, help="seconds until it expires")
    sp.add_argument("--idle", type=float, help="seconds without traffic until it stops passing")
    verb("revoke", None, "edge").add_argument("edge")
    for name in ("deny-exec", "allow-exec"):
        verb(name, None, "path").add_argument("path", type=_resolved)
    verb("quarantine-cgroup", "refuse connects from a cgroup except to management peers",
         "cgroup").add_argument("cgroup", type=_resolved, help="a cgroup v2 directory")
    verb("release-cgroup", "let a quarantined cgroup connect again",
         "cgroup").add_argument("cgroup", type=_resolved, help="a cgroup v2 directory")
    sp = groups.add_parser("events", help="events from the spool")
    sp.add_argument("--limit", type=int, default=20)
    sp.add_argument("--after", type=int, help="only events after this sequence number")
    sp.add_argument("--follow", action="store_true", help="keep printing new events")
    sp.set_defaults(func=cmd_control_events)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aegis-agent", description="Aegis node agent")
    p.add_argument("--config", type=Path, default=DEFAULT_PATH,
                   help=f"agent config (default {DEFAULT_PATH})")
    p.add_argument("--socket", type=Path, help="control socket (default: from the config)")
    groups = p.add_subparsers(dest="cmd", required=True)
    _register_daemon(groups)
    _register_control(groups)
    register_segment(groups)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as e:
        print(f"aegis-agent: {e}", file=sys.stderr)
        return 2
    except ControlError as e:
        print(f"aegis-agent: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
