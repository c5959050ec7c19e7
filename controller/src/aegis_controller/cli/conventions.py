"""What every ``aegis-controller`` command shares: exit codes, the input error that exits 2,
argument value types, JSON output and the operator's actor name."""

from __future__ import annotations

import argparse
import getpass
import json
import os
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERNAL = 0, 1, 2, 3


class InputError(Exception):
    """A command-line value is wrong; exit 2."""


def print_json(doc: object) -> None:
    print(json.dumps(doc, ensure_ascii=False))


def positive(text: str) -> int:
    return _whole(text, 1)


def non_negative(text: str) -> int:
    return _whole(text, 0)


def _whole(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"{value} must be {least} or more")
    return value


def env_int(name: str) -> int | None:
    """A positive whole number from environment variable ``name`` (None: unset)."""
    value = os.environ.get(name)
    if not value:
        return None
    try:
        return positive(value)
    except argparse.ArgumentTypeError as err:
        raise InputError(f"environment variable {name}: {err}") from None


def default_actor() -> str:
    try:
        return f"operator:{getpass.getuser()}"
    except (KeyError, OSError):
        return f"operator:uid{os.getuid()}"


def read_input(path: str) -> str:
    """A file the operator named on the command line; InputError saying why it cannot be read."""
    try:
        return Path(path).read_text()
    except OSError as err:
        raise InputError(f"{path}: cannot read it ({err.strerror or err})") from None
