"""The secrets gate: a trusted node with a node role gets a signed ``fetch-secrets`` order
carrying a response-wrapped secret_id of its AppRole; nothing else does.

The gate runs in ``aegis-controller serve`` (when a secrets token file is configured). It
is told after the fact — once a state move, an acknowledgment or a heartbeat has committed
— which node changed, and acts in its own thread: it asks Vault for the wrapped secret_id
with no database transaction open, then, in one transaction, checks the node is still
trusted and creates the order (lifetime = the wrap TTL). The ledger's order record shows
the wrapping token's accessor and creation path, never the token. A refusal or an
unreachable Vault is recorded (``secret_lease`` / ``wrap_failed``) and logged, and tried
again at the node's next heartbeat.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import TYPE_CHECKING

from aegis_protocol.secrets import MAX_WRAP_TTL

from ..errors import DomainError
from ..ledger import Kind
from ..nodes import NodeState, NodeStore
from .revocation import Revoker
from .settings import SecretsSettings
from .store import KIND, SecretsStore
from .vault import SecretsVault, VaultCallError

if TYPE_CHECKING:
    from ..domain import Controller

log = logging.getLogger(__name__)
ACTOR = "controller:secrets"


class SecretsGate:
    def __init__(self, ctl: Controller, settings: SecretsSettings,
                 vault: SecretsVault | None = None) -> None:
        self.ctl = ctl
        self.settings = settings
        self.vault = vault or SecretsVault(settings)
        self.store: SecretsStore = ctl.secrets
        self.revoker = Revoker(self.store, self.vault, settings)
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._queued: set[str] = set()  # a node is in the queue at most once
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.ctl.nodes.watchers.append(self.node_changed)
        self._thread = threading.Thread(target=self._run, daemon=True, name="secrets-gate")
        self._thread.start()
        self.revoker.start()
        log.info("secrets gate on", extra={"vault": self.settings.addr,
                                           "approle_mount": self.settings.approle_mount,
                                           "prefix": self.settings.prefix,
                                           "wrap_ttl_s": self.settings.wrap_ttl})

    def stop(self) -> None:
        if self.node_changed in self.ctl.nodes.watchers:
            self.ctl.nodes.watchers.remove(self.node_changed)
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.revoker.stop()
        self.vault.close()

    def node_changed(self, node_id: str) -> None:
        """Called after a change of ``node_id`` committed (never waits for Vault)."""
        self.revoker.wake()
        with self._lock:
            if node_id in self._queued:
                return
            self._queued.add(node_id)
        self._queue.put(node_id)

    def _run(self) -> None:
        while (node_id := self._queue.get()) is not None:
            with self._lock:
                self._queued.discard(node_id)
            try:
                self.issue(node_id)
            except Exception:
                log.exception("secrets gate failed for a node", extra={"node": node_id})

    def issue(self, node_id: str) -> str | None:
        """A fetch-secrets order for the node if it wants one now; returns its id."""
        role = self.store.wanted_role(node_id)
        if role is None:
            return None
        approle, path = self.settings.approle(role), self.settings.creation_path(role)
        try:
            wrapped = self.vault.wrap_secret_id(role, node_id)
            if wrapped.creation_path != path or not 0 < wrapped.ttl <= MAX_WRAP_TTL:
                raise VaultCallError(f"the vault wrapped a secret_id of "
                                     f"{wrapped.creation_path!r} for {wrapped.ttl} s; "
                                     f"expected {path!r} for at most {MAX_WRAP_TTL} s")
        except VaultCallError as e:
            self.ctl.ledger.append(Kind.SECRET_LEASE, node_id, {
                "event": "wrap_failed", "role": approle, "creation_path": path,
                "reason": str(e)}, actor=ACTOR)
            log.warning("no secrets for a trusted node: retried at its next heartbeat",
                        extra={"node": node_id, "role": approle, "why": str(e)})
            return None
        recorded = {"role": approle, "wrap_accessor": wrapped.accessor,
                    "creation_path": wrapped.creation_path, "wrap_ttl": wrapped.ttl}
        with self.ctl.ledger.recording() as rec:
            row = NodeStore.row_in(rec.conn, node_id)
            why = None
            if row["state"] != NodeState.TRUSTED:
                why = f"the node is {row['state']} now"
            elif row["secrets_role"] != role:
                why = "the node's secrets role changed"
            elif SecretsStore.pending_order(rec.conn, node_id, int(time.time())):
                why = f"a {KIND} order is already pending"
            elif SecretsStore.quarantine_pending(rec.conn, node_id):
                why = "a quarantine order is pending"
            if why is None:
                try:
                    signed = self.ctl.orders.create_in(
                        rec, node_id, KIND,
                        {"role": approle, "wrapped_secret_id": wrapped.token},
                        ACTOR, lifetime=wrapped.ttl, ledger_args=recorded)
                except DomainError as e:  # refused before anything was written
                    # a validation message may quote the token: never let it out
                    why = f"order refused: {e.message}".replace(wrapped.token, "***")
        if why is not None:  # the wrapping token expires unused within its TTL
            self.ctl.ledger.append(Kind.SECRET_LEASE, node_id, {
                "event": "wrap_unused", "role": approle, "wrap_accessor": wrapped.accessor,
                "reason": why}, actor=ACTOR)
            log.warning("fetch-secrets order not created", extra={"node": node_id,
                                                                   "why": why})
            return None
        log.info("fetch-secrets order created", extra={
            "node": node_id, "role": approle, "order_id": str(signed.order.id),
            "wrap_accessor": wrapped.accessor})
        return str(signed.order.id)
