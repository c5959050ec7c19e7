"""Run the API with uvicorn over mutual TLS, from a controller state directory."""

from __future__ import annotations

import asyncio.constants
import logging
import signal
import ssl
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import uvicorn

from ..access.identity import OidcSettings, TokenVerifier
from ..domain import Controller
from ..ledger import DEFAULT_SEAL_INTERVAL, sealing
from ..metrics import ControllerMetrics, verify_periodically
from ..secrets.settings import SecretsSettings
from .app import create_app
from .connections import ConnectionLimits, guarded_protocol

if TYPE_CHECKING:
    from ..recovery.engine import RecoveryWiring


def _watch_heartbeats(controller: Controller, deadline: int) -> None:
    log = logging.getLogger("aegis_controller.heartbeats")
    while True:
        time.sleep(max(1.0, deadline / 4))
        try:
            late = controller.attestation.check_deadlines(deadline)
        except Exception:
            log.exception("heartbeat deadline check failed")
            continue
        for node in late:
            log.warning("node missed its heartbeat deadline: now suspect",
                        extra={"node": node, "deadline_s": deadline})


def _expire_access(controller: Controller, interval: float = 5.0) -> None:
    """Record granted access whose time ended (the agents drop the edges themselves)."""
    log = logging.getLogger("aegis_controller.access")
    while True:
        time.sleep(interval)
        try:
            for request_id in controller.access.expire_due():
                log.info("access grant expired", extra={"request_id": request_id})
            controller.access.sessions.flush(time.time_ns())
        except Exception:
            log.exception("access expiry check failed")


def _exit_on_sigterm() -> None:
    """Make SIGTERM end the process through Python's unwinding (``finally`` blocks run),
    like SIGINT does: uvicorn stops gracefully on it and then re-raises it to the handler
    it found, which by default would kill the process before the final ledger seal."""

    def terminate(signum: int, frame: object) -> None:
        raise SystemExit(0)

    if threading.current_thread() is threading.main_thread():  # else uvicorn takes none
        signal.signal(signal.SIGTERM, terminate)


def serve(controller: Controller, state_dir: Path, host: str, port: int,
          heartbeat_deadline: int = 90, limits: ConnectionLimits | None = None,
          seal_interval: float = DEFAULT_SEAL_INTERVAL,
          secrets: SecretsSettings | None = None,
          recovery: RecoveryWiring | None = None, verify_interval: float = 0,
          oidc: OidcSettings | None = None) -> None:
    limits = limits or ConnectionLimits()
    metrics = ControllerMetrics(controller.engine)
    stop_verify = threading.Event()
    if verify_interval > 0:  # the whole ledger, on a timer: aegis_ledger_verify_*
        threading.Thread(target=verify_periodically, name="ledger-verify", daemon=True,
                         args=(metrics, controller.ledger, verify_interval, stop_verify)
                         ).start()
    gate = None
    if secrets is not None:  # leased secrets: gated on trust, revoked without the agent
        from ..secrets.gate import SecretsGate

        gate = SecretsGate(controller, secrets)
        gate.start()

    engine = recovery.start(controller) if recovery is not None else None

    threading.Thread(target=_watch_heartbeats, args=(controller, heartbeat_deadline),
                     daemon=True, name="heartbeat-deadlines").start()
    threading.Thread(target=_expire_access, args=(controller,), daemon=True,
                     name="access-expiry").start()
    verifier = TokenVerifier(oidc) if oidc is not None else None

    tls_dir = state_dir / "tls"
    tls_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    key, cert = controller.ca.server_cert(tls_dir, [host, "localhost"])
    app = create_app(controller, metrics, verifier,
                     recovery.settings.guard_rails if recovery is not None else None)
    config = uvicorn.Config(
        app, host=host, port=port, ssl_keyfile=str(key),
        ssl_certfile=str(cert), ssl_ca_certs=str(controller.ca.cert_path),
        ssl_cert_reqs=ssl.CERT_OPTIONAL, http=guarded_protocol(limits), log_config=None,
        access_log=False, lifespan="on", limit_concurrency=limits.max_connections,
        timeout_keep_alive=5, h11_max_incomplete_event_size=16 * 1024)
    # uvicorn gives no handle on the TLS handshake's deadline; asyncio's SSL transport reads
    # this constant at every accept (create_server passes None). Without it a client that
    # connects and never says hello holds a descriptor for 60 s, before any guard above
    # sees the connection. This process is the controller's own, so the change is local.
    asyncio.constants.SSL_HANDSHAKE_TIMEOUT = limits.read_timeout
    # The ledger's head is sealed on a timer and at shutdown (an unanchored tail no older
    # than the interval).
    _exit_on_sigterm()
    server = uvicorn.Server(config)
    # agents' long polls for orders give up when the server stops (uvicorn waits for every
    # answer in flight before it exits)
    app.state.stopping = lambda: server.should_exit
    try:
        with sealing(controller.ledger, seal_interval):
            server.run()
    finally:
        stop_verify.set()
        if engine is not None:
            engine.stop()
        if gate is not None:
            gate.stop()
