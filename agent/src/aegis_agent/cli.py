"""``aegis-agent``: run the daemon, check its config, and talk to it over the control socket.

    aegis-agent run [--config FILE]
    aegis-agent check-config [FILE]
    aegis-agent status | edges | quarantine | release
    aegis-agent grant "10.0.0.0/24 -> 10.0.0.2 tcp/22" --ttl 600 --idle 60
    aegis-agent revoke "10.0.0.0/24 -> 10.0.0.2 tcp/22"
    aegis-agent events [--limit N] [--after SEQ] [--follow]
    aegis-agent deny-exec PATH | allow-exec PATH
    aegis-agent detach [--config FILE]      # with the daemon stopped: remove all enforcement

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

from .config import DEFAULT_PATH, ConfigError, load_config
from .control import ControlError, call


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aegis-agent", description="Aegis node agent")
    p.add_argument("--config", type=Path, default=DEFAULT_PATH,
                   help=f"agent config (default {DEFAULT_PATH})")
    p.add_argument("--socket", type=Path, help="control socket (default: from the config)")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("run", help="run the daemon in the foreground (systemd: Type=notify)")
    c = sub.add_parser("check-config", help="validate a config file")
    c.add_argument("file", nargs="?", type=Path)
    sub.add_parser("detach", help="remove every program, link and pin (daemon stopped)")
    for name in ("status", "edges", "quarantine", "release"):
        sub.add_parser(name)
    g = sub.add_parser("grant", help="allow an edge: 'SRC -> DST PROTO/PORT'")
    g.add_argument("edge")
    g.add_argument("--ttl", type=float, help="seconds until it expires")
    g.add_argument("--idle", type=float, help="seconds without traffic until it stops passing")
    r = sub.add_parser("revoke")
    r.add_argument("edge")
    e = sub.add_parser("events", help="events from the spool")
    e.add_argument("--limit", type=int, default=20)
    e.add_argument("--after", type=int, help="only events after this sequence number")
    e.add_argument("--follow", action="store_true", help="keep printing new events")
    for name in ("deny-exec", "allow-exec"):
        sub.add_parser(name).add_argument("path")
    return p


def _socket_path(args: argparse.Namespace) -> Path:
    if args.socket:
        return args.socket
    if args.config.exists():
        return load_config(args.config).control.socket
    from .config import ControlConfig

    return ControlConfig().socket


def _print(result: object) -> None:
    print(json.dumps(result, indent=2, default=str))


def _events(path: Path, args: argparse.Namespace) -> int:
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


def main(argv: list[str] | None = None) -> int:  # noqa: PLR0911 (one return per command)
    args = _parser().parse_args(argv)
    try:
        if args.cmd == "check-config":
            path = args.file or args.config
            load_config(path)
            print(f"{path}: OK")
            return 0
        if args.cmd == "run":
            setup_logging()
            from .daemon import Agent

            return asyncio.run(Agent(load_config(args.config)).run())
        if args.cmd == "detach":
            from .daemon import detach

            _print(detach(load_config(args.config)))
            return 0
        path = _socket_path(args)
        if args.cmd == "events":
            return _events(path, args)
        extra = {}
        if args.cmd in ("grant", "revoke"):
            extra["edge"] = args.edge
        if args.cmd == "grant":
            extra |= {k: v for k, v in (("ttl", args.ttl), ("idle", args.idle)) if v is not None}
        if args.cmd in ("deny-exec", "allow-exec"):
            extra["path"] = str(Path(args.path).resolve())
        _print(call(path, args.cmd, **extra))
        return 0
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
