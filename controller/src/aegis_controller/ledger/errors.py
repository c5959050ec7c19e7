"""Errors of the ledger. Each message says what was wrong, where, and the fix."""

from __future__ import annotations


class LedgerError(Exception):
    """Base of the ledger's own errors (bad input, keys, anchor)."""


class LedgerInputError(LedgerError):
    """A caller asked for something invalid (unknown kind, body not an object...)."""


class KeyFileError(LedgerError):
    """The ledger key is missing, unreadable, too open or not an Ed25519 key."""


class AnchorError(LedgerError):
    """The anchor file cannot be read or written, or refuses to move backwards."""
