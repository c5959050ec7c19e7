"""The just-in-time access routes of the API (``/v1/access``): a user, named by the JSON
Web Token the ``user`` dependency verifies, asks for, approves, denies, revokes and reads
access requests; :class:`aegis_controller.access.store.Access` decides."""

# no ``from __future__ import annotations``: FastAPI reads the routes' annotations, and
# UserId is local to add_access_routes
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, FastAPI, Request

from aegis_protocol import routes
from aegis_protocol.access import AccessDecision, AccessRequest, AccessState

from ..access.identity import User
from ..domain import Controller


def add_access_routes(app: FastAPI, controller: Controller,
                      user_identity: Callable[[Request], User]) -> None:
    """Add the routes; ``user_identity`` names the user from the request's bearer token."""
    UserId = Annotated[User, Depends(user_identity)]

    @app.post(routes.ACCESS, response_model=AccessState, status_code=201,
              responses={401: {"description": "no valid user token"},
                         403: {"description": "the access policy refuses"}})
    def access_request(req: AccessRequest, user: UserId, request: Request) -> AccessState:
        """Ask for a service of the access policy: ``pending`` or ``granted``."""
        return controller.access.request(user, req, request.client.host if request.client
                                         else "")

    @app.get(routes.ACCESS, response_model=list[AccessState])
    def access_list(user: UserId) -> list[AccessState]:
        """The requests the user made or may approve."""
        return controller.access.visible(user)

    @app.get(routes.ACCESS_ONE, response_model=AccessState)
    def access_show(request_id: str, user: UserId) -> AccessState:
        return controller.access.get(user, request_id)

    @app.post(routes.ACCESS_APPROVE, response_model=AccessState)
    def access_approve(request_id: str, body: AccessDecision, user: UserId) -> AccessState:
        return controller.access.approve(user, request_id, body.reason)

    @app.post(routes.ACCESS_DENY, response_model=AccessState)
    def access_deny(request_id: str, body: AccessDecision, user: UserId) -> AccessState:
        return controller.access.deny(user, request_id, body.reason)

    @app.post(routes.ACCESS_REVOKE, response_model=AccessState)
    def access_revoke(request_id: str, body: AccessDecision, user: UserId) -> AccessState:
        return controller.access.revoke(user, request_id, body.reason)
