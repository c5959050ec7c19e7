"""Who opens the console: an operator client certificate (the API's mutual TLS, the same
record check as every operator route), and the CSRF token its forms carry.

A node's certificate is refused with 403 (it is authenticated, but not an operator); no
certificate with 401. The CSRF token is an HMAC, under a key made when the process
starts, of the operator's name and certificate serial: a page rendered for this
operator over this certificate carries it, a form posted from anywhere else does not."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from fastapi import Request

from ..access.identity import User
from ..domain import Controller
from ..errors import Forbidden, Unauthenticated
from ..operators import OperatorRights


@dataclass(frozen=True)
class ConsoleUser:
    """The operator on the other end of this request, with its console rights."""

    rights: OperatorRights
    serial: int

    @property
    def actor(self) -> str:
        return f"operator:{self.rights.name}"

    @property
    def may_approve(self) -> bool:
        return self.rights.may_approve

    def as_user(self) -> User:
        """This operator as the access policy sees an approver (its groups)."""
        return User(sub=self.actor, name=self.actor, groups=self.rights.groups)


class ConsoleAuth:
    def __init__(self, controller: Controller) -> None:
        self.controller = controller
        self._key = secrets.token_bytes(32)

    def identify(self, request: Request) -> ConsoleUser:
        cn = getattr(request.state, "peer_cn", None)
        serial = getattr(request.state, "peer_serial", None)
        if not cn:
            raise Unauthenticated("the console needs an operator client certificate "
                                  "(aegis-controller operator-cert NAME): import it in your "
                                  "browser and open the console again")
        if not cn.startswith("operator:"):
            raise Forbidden("this client certificate belongs to a node, not an operator: the "
                            "console opens only with an operator certificate "
                            "(aegis-controller operator-cert NAME)")
        rights = self.controller.operators.check(cn.removeprefix("operator:"), serial)
        return ConsoleUser(rights, int(serial or 0))

    def token(self, user: ConsoleUser) -> str:
        msg = f"{user.rights.name}:{user.serial:x}".encode()
        return hmac.new(self._key, msg, hashlib.sha256).hexdigest()

    def check_token(self, user: ConsoleUser, given: str | None) -> None:
        if not given or not hmac.compare_digest(given, self.token(user)):
            raise Forbidden("this form was not posted from a console page of yours (missing "
                            "or wrong CSRF token): reload the page and submit it again")

    @staticmethod
    def require_approve(user: ConsoleUser, what: str) -> None:
        if not user.may_approve:
            raise Forbidden(f"operator {user.rights.name!r} is read-only in the console and "
                            f"may not {what}: an administrator issues a certificate with "
                            "`aegis-controller operator-cert NAME --approve`")
