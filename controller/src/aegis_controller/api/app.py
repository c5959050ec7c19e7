"""The controller's HTTPS API (FastAPI): request bodies are aegis_protocol models, the
OpenAPI document is at /openapi.json, and every refusal is a 4xx JSON answer whose
``detail`` says what was wrong. This module only names the caller (node or operator, from
the client certificate), calls the domain and maps its errors to statuses, here and
nowhere else."""

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated

from fastapi import Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from aegis_protocol import routes
from aegis_protocol.attestation import Challenge, ExpectedProfile, SignedReport, Verdict
from aegis_protocol.enrollment import (
    EnrollRequest,
    EnrollResponse,
    Heartbeat,
    HeartbeatAck,
    NodeStatus,
    RenewRequest,
    RenewResponse,
)
from aegis_protocol.events import EventBatch, EventBatchAck
from aegis_protocol.orders import OrderKind, SignedAck, SignedOrder

from ..access.identity import TokenVerifier, User
from ..console import PREFIX as CONSOLE
from ..console import add_console
from ..console.render import error_page
from ..db import DatabaseBusy
from ..domain import Controller
from ..errors import (
    Conflict,
    DomainError,
    Forbidden,
    Invalid,
    NotFound,
    TooMany,
    Unauthenticated,
    Unavailable,
)
from ..metrics import ControllerMetrics, RequestTimer
from ..order_bell import RECHECK
from ..recovery.guard import GuardRails
from .access_routes import add_access_routes
from .limits import RequestLimits

#: The one mapping of domain refusals to HTTP statuses.
STATUS: dict[type[DomainError], int] = {
    Invalid: 400, Unauthenticated: 401, Forbidden: 403, NotFound: 404, Conflict: 409,
    TooMany: 429, Unavailable: 503}
#: Seconds a client is told to wait when the database's write lock is contended (503).
RETRY_AFTER = 2


class OrderRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    node_id: str = Field(min_length=1, max_length=63)
    kind: OrderKind
    args: dict[str, str | int | float | list[str]] = Field(default_factory=dict, max_length=16)
    lifetime: int = Field(300, ge=10, le=3600)


def _readable(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:10]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


def _answer_errors(app: FastAPI) -> None:
    """Refusals, a busy database and invalid bodies as JSON with one clear detail."""
    def refusal(request: Request, status: int, detail: str,
                headers: dict[str, str] | None = None) -> Response:
        if request.url.path == CONSOLE or request.url.path.startswith(CONSOLE + "/"):
            return error_page(request, status, detail, headers)  # a page, or its JSON
        return JSONResponse({"detail": detail}, status_code=status, headers=headers)

    @app.exception_handler(DomainError)
    async def refused(request: Request, exc: DomainError) -> Response:
        status = next((STATUS[c] for c in type(exc).__mro__ if c in STATUS), 400)
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, TooMany) else None
        return refusal(request, status, exc.message, headers)

    @app.exception_handler(DatabaseBusy)
    async def busy(request: Request, _exc: DatabaseBusy) -> Response:
        return refusal(request, 503, "the controller is busy (database write lock held by "
                       "other requests): retry after a few seconds",
                       {"Retry-After": str(RETRY_AFTER)})

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        return refusal(request, 422, f"invalid request: {_readable(exc)}")

    @app.exception_handler(Exception)
    async def failed(request: Request, _exc: Exception) -> Response:
        """A bug: a clear 500 (the traceback goes to the log, never to the client)."""
        return refusal(request, 500, "the controller failed on this request; its log has "
                       "the details")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return refusal(request, exc.status_code, str(exc.detail), exc.headers)


def _user_identity(verifier: TokenVerifier | None) -> Callable[[Request], User]:
    """The access routes' dependency: the user a bearer token names (its issuer's keys)."""
    def user_identity(request: Request) -> User:
        if verifier is None:
            raise Unauthenticated("this controller accepts no user tokens: start it with "
                                  "--oidc-issuer URL --oidc-audience AUD")
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("Authorization: send the JSON Web Token from your "
                                  "identity provider as 'Authorization: Bearer TOKEN'")
        return verifier.verify(token.strip())
    return user_identity


def _never() -> bool:
    return False


async def _orders_long_poll(controller: Controller, node: str, wait: float,
                            stopping: Callable[[], bool]) -> list[SignedOrder]:
    """The node's pending orders; none, held up to ``wait`` seconds for one: woken by the
    node's bell (an order made in this process), re-read every ``RECHECK`` seconds (one
    another process made), given up early when the server is stopping (checked twice a
    second, so a shutdown never waits on a poll)."""
    bell = controller.orders.bell
    deadline = time.monotonic() + wait
    since, next_read = bell.rings(node), 0.0
    while True:
        now = time.monotonic()
        if now >= next_read:
            orders = await run_in_threadpool(controller.orders.pending, node)
            if orders:
                return orders
            next_read = now + RECHECK
        left = deadline - now
        if left <= 0 or stopping():
            return []
        if await bell.wait(node, since, min(left, 0.5, max(0.0, next_read - now))):
            since, next_read = bell.rings(node), 0.0


def create_app(controller: Controller, metrics: ControllerMetrics | None = None,
               verifier: TokenVerifier | None = None,
               rails: GuardRails | None = None) -> FastAPI:
    """The API and the operator console; ``verifier`` checks users' tokens for the access
    routes (None: those routes answer 401 saying no identity provider is configured);
    ``rails`` are the recovery engine's guard rails the console shows (None: no engine)."""
    metrics = metrics or ControllerMetrics(controller.engine)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        controller.enrollment.flush_noise()  # the last window of unknown-token refusals

    app = FastAPI(title="Aegis controller", version="1", docs_url=None, redoc_url=None,
                  lifespan=lifespan)
    app.add_middleware(RequestLimits)  # certificate and body size, before any body is read
    app.add_middleware(RequestTimer, metrics=metrics)  # outermost: refusals are timed too

    _answer_errors(app)

    def node_identity(request: Request) -> str:
        cn = getattr(request.state, "peer_cn", None)
        if not cn or cn.startswith("operator:"):
            raise Unauthenticated("this route needs a node client certificate issued at "
                                  "enrollment")
        controller.enrollment.current_certificate(cn, getattr(request.state, "peer_serial", None))
        return cn

    def operator_identity(request: Request) -> str:
        cn = getattr(request.state, "peer_cn", None)
        if not cn or not cn.startswith("operator:"):
            raise Unauthenticated("this route needs an operator client certificate "
                                  "(aegis-controller operator-cert NAME)")
        controller.operators.check(cn.removeprefix("operator:"),
                                   getattr(request.state, "peer_serial", None))
        return cn

    Node = Annotated[str, Depends(node_identity)]
    Operator = Annotated[str, Depends(operator_identity)]

    @app.post(routes.ENROLL, response_model=EnrollResponse,
              responses={403: {"description": "token refused"}})
    def enroll(req: EnrollRequest, request: Request) -> EnrollResponse:
        client = request.client
        return controller.enrollment.enroll(req, f"{client.host}:{client.port}" if client else "?")

    @app.post(routes.EVENTS, response_model=EventBatchAck,
              responses={401: {"description": "no node certificate"},
                         403: {"description": "not this node's batch"}})
    def events(batch: EventBatch, node: Node) -> EventBatchAck:
        ack = controller.intake.store(node, batch)
        metrics.ingested(ack)
        return ack

    @app.post(routes.CERTIFICATE, response_model=RenewResponse,
              responses={401: {"description": "no current node certificate"}})
    def renew(req: RenewRequest, node: Node) -> RenewResponse:
        """A new short-lived client certificate for a new key; the old one stops working."""
        return controller.enrollment.renew_certificate(node, req)

    @app.get(routes.NODE_SELF, response_model=NodeStatus)
    def whoami(node: Node) -> NodeStatus:
        row = controller.nodes.get(node)
        return NodeStatus(node_id=node, state=row["state"], reason=row["reason"])

    @app.get(routes.ATTEST_CHALLENGE, response_model=Challenge)
    def challenge(node: Node) -> Challenge:
        return controller.attestation.challenge(node)

    @app.post(routes.ATTEST, response_model=Verdict,
              responses={403: {"description": "forged or tampered report"},
                         409: {"description": "replayed or unknown nonce"}})
    def attest(report: SignedReport, node: Node) -> Verdict:
        return controller.attestation.attest(node, report)

    @app.post(routes.HEARTBEAT)
    def heartbeat(hb: Heartbeat, node: Node) -> HeartbeatAck:
        ack = controller.attestation.heartbeat(node, hb)
        metrics.lost_reported(hb.events_lost)
        if hb.edges_seen:
            controller.access.packets_seen(node, hb.edges_seen)
        return ack

    @app.put(routes.NODE_PROFILE, status_code=204)
    def set_profile(node_id: str, profile: ExpectedProfile, operator: Operator) -> None:
        controller.attestation.set_profile(node_id, profile, operator)

    @app.post(routes.ORDERS, response_model=SignedOrder, status_code=201)
    def create_order(req: OrderRequest, operator: Operator) -> SignedOrder:
        return controller.orders.create(req.node_id, req.kind, req.args, operator, req.lifetime)

    @app.get(routes.ORDERS, response_model=list[SignedOrder])
    async def my_orders(request: Request, node: Node, wait: Annotated[float, Query(
            ge=0, le=routes.ORDERS_WAIT_MAX,
            description="seconds to hold the answer until an order is made for the node "
                        "(0: answer at once)")] = 0) -> list[SignedOrder]:
        return await _orders_long_poll(controller, node, wait,
                                       getattr(request.app.state, "stopping", _never))

    @app.post(routes.ORDER_ACK)
    def ack_order(order_id: str, ack: SignedAck, node: Node) -> dict:
        return controller.orders.acknowledge(node, order_id, ack)

    @app.get("/metrics", include_in_schema=False, response_class=Response)
    def metrics_text(_operator: Operator) -> Response:
        """Prometheus text format (aegis_controller.metrics); an operator certificate."""
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    add_access_routes(app, controller, _user_identity(verifier))
    add_console(app, controller, metrics, rails)

    @app.get("/healthz")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app
