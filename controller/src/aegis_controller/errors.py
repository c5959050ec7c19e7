"""The controller's domain errors: what a refusal means, never how a transport answers it.

``api/app.py`` maps each class to one HTTP status (``NotFound`` 404, ``Forbidden`` 403,
``Conflict`` 409, ``Invalid`` 400, ``Unauthenticated`` 401, ``TooMany`` 429 with
Retry-After, ``Unavailable`` 503) and the CLI to exit code 2;
``message`` is the text either shows.
"""

from __future__ import annotations


class DomainError(Exception):
    """A request the controller will not honour; ``message`` says why and what to do."""

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


class NotFound(DomainError):
    """The node, order or other thing named does not exist."""


class Forbidden(DomainError):
    """The caller may not do this (wrong node, refused token, bad signature)."""


class Conflict(DomainError):
    """The thing is not in a state that allows this (already used, already moved)."""


class Invalid(DomainError):
    """The input is malformed (a CSR, a key, an order's arguments, a ttl)."""


class Unauthenticated(DomainError):
    """The caller's credential is not (or no longer) the one the controller accepts."""


class TooMany(DomainError):
    """The caller sent too many requests; ``retry_after`` says in how many seconds it may
    try again."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = max(1, int(retry_after + 0.999))


class Unavailable(DomainError):
    """Something the controller depends on (the identity provider) does not answer now."""
