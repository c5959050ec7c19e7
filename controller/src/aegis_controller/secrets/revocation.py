"""Revoking a node's leased secrets without its agent (the node may be compromised or
dead): a background worker takes each grant whose revocation was asked for (durably, by
a quarantine order, a state move away from trusted, a refresh or a cleared role) and

0. checks the token is this node's (``auth/token/lookup-accessor``: the secret_id's
   metadata ``aegis_node`` is on it) — a false report is refused, not acted on,
1. revokes the token by accessor (``auth/token/revoke-accessor``),
2. revokes each lease id the node reported (``sys/leases/revoke-prefix/<lease id>``),
3. verifies ``auth/token/lookup-accessor`` now fails,
4. with a verify DSN, verifies each reported login is gone from ``pg_roles`` (polled).

Each step goes on the ledger (``secret_lease`` / ``revocation_step``) with its start and end
in epoch milliseconds and its outcome. A failed step ends the attempt: it is recorded
(``revocation_failed``) and the grant retried with back-off until it succeeds
(``revoked``); nothing is dropped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from .settings import SecretsSettings
from .store import SecretsStore, now_ms
from .vault import OWNER, SecretsVault, VaultCallError

log = logging.getLogger(__name__)

#: Longest wait between two attempts at one grant (seconds).
MAX_BACKOFF = 30
#: Seconds a revoked login may take to disappear from pg_roles.
LOGIN_GONE_WITHIN = 10.0
#: Seconds between two renewals of the controller's own token.
RENEW_EVERY = 3600.0


class StepFailed(Exception):
    pass


class Foreign(Exception):
    """The reported accessor is another node's: nothing of this grant is revoked."""


def backoff(attempts: int) -> int:
    """Seconds before the next attempt after ``attempts`` failed ones (1, 2, 4 ... 30)."""
    return min(2 ** max(attempts - 1, 0), MAX_BACKOFF)


class Revoker:
    def __init__(self, store: SecretsStore, vault: SecretsVault, settings: SecretsSettings,
                 poll: float = 1.0) -> None:
        self.store = store
        self.vault = vault
        self.settings = settings
        self.poll = poll
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True, name="secrets-revoker")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        renewed = 0.0
        while not self._stop.is_set():
            if time.monotonic() - renewed > RENEW_EVERY:
                renewed = time.monotonic()
                try:
                    self.vault.renew_self()
                except VaultCallError as e:
                    log.warning("the controller's secrets token was not renewed",
                                extra={"why": str(e)})
            try:
                self.run_once()
            except Exception:
                log.exception("secrets revocation round failed")
            self._wake.wait(self.poll)
            self._wake.clear()

    def run_once(self) -> int:
        """Every grant due now, one attempt each; returns how many were revoked."""
        self.store.scrub_expired()
        return sum(self.revoke(grant) for grant in self.store.due()
                   if not self._stop.is_set())

    def revoke(self, grant: dict[str, Any]) -> bool:
        accessor = grant["accessor"]
        steps: list[tuple[str, str, Callable[[], str]]] = [
            ("check_owner", accessor, lambda: self._owner(accessor, grant["node_id"])),
            ("revoke_accessor", accessor, lambda: self._revoke_accessor(accessor))]
        steps += [("revoke_lease", lease, lambda lease=lease: self._revoke_lease(lease))
                  for lease in grant["leases"]]
        steps.append(("verify_token", accessor, lambda: self._token_gone(accessor)))
        if self.settings.verify_dsn:
            steps += [("verify_login", login, lambda login=login: self._login_gone(login))
                      for login in grant["logins"]]
        for name, target, call in steps:
            started = now_ms()
            try:
                detail, failed = call(), None
            except Foreign as e:
                self.store.step(grant, {"step": name, "target": target, "started_ms": started,
                                        "ended_ms": now_ms(), "outcome": "refused",
                                        "detail": str(e)})
                self.store.revocation_refused(grant, str(e))
                log.warning("a node reported another node's secrets: not revoked", extra={
                    "node": grant["node_id"], "accessor": accessor, "why": str(e)})
                return False
            except (VaultCallError, StepFailed) as e:
                detail, failed = str(e), str(e)
            self.store.step(grant, {"step": name, "target": target, "started_ms": started,
                                    "ended_ms": now_ms(),
                                    "outcome": "failed" if failed else "ok",
                                    "detail": detail})
            if failed:
                retry = backoff(grant["attempts"] + 1)
                self.store.revocation_failed(grant, f"{name} {target}: {failed}", retry)
                log.warning("revoking a node's secrets failed: retrying", extra={
                    "node": grant["node_id"], "accessor": accessor, "step": name,
                    "why": failed, "retry_in_s": retry})
                return False
        self.store.revocation_done(grant)
        log.info("node's secrets revoked", extra={"node": grant["node_id"],
                                                  "accessor": accessor})
        return True

    def _owner(self, accessor: str, node_id: str) -> str:
        """The accessor must be of a token this node logged in with (the secret_id's
        metadata the gate set): a node cannot have another node's token revoked."""
        try:
            data = self.vault.lookup_accessor(accessor).get("data") or {}
        except VaultCallError as e:
            if e.status == 400:
                return "token already gone"
            raise
        owner = (data.get("meta") or {}).get(OWNER)
        if owner is not None and owner != node_id:
            raise Foreign(f"the token of this accessor was issued for node {owner!r}, not "
                          f"{node_id!r}: the report was false; not revoked")
        return f"token of node {owner!r}" if owner else "token without an owner mark"

    def _revoke_accessor(self, accessor: str) -> str:
        try:
            self.vault.revoke_accessor(accessor)
        except VaultCallError as e:
            if e.status == 400 and "invalid accessor" in str(e):
                return "already revoked (invalid accessor)"
            raise
        return "revoked"

    def _revoke_lease(self, lease: str) -> str:
        self.vault.revoke_lease_prefix(lease)
        return "revoked"

    def _token_gone(self, accessor: str) -> str:
        try:
            self.vault.lookup_accessor(accessor)
        except VaultCallError as e:
            if e.status == 400:  # the server no longer knows it
                return f"lookup fails: {e}"
            raise
        raise StepFailed("the token is still valid after revoke-accessor")

    def _login_gone(self, login: str) -> str:
        dsn = self.settings.verify_dsn or ""
        deadline = time.monotonic() + LOGIN_GONE_WITHIN
        try:
            with psycopg.connect(dsn, connect_timeout=5, autocommit=True) as conn:
                while True:
                    if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s",
                                    (login,)).fetchone() is None:
                        return "absent from pg_roles"
                    if time.monotonic() > deadline:
                        raise StepFailed(f"login still in pg_roles after "
                                         f"{LOGIN_GONE_WITHIN:.0f} s")
                    time.sleep(0.2)
        except psycopg.Error as e:
            raise StepFailed(f"cannot check pg_roles: {_scrubbed(str(e), dsn)}") from None


def _scrubbed(text: str, dsn: str) -> str:
    try:
        password = conninfo_to_dict(dsn).get("password")
    except psycopg.Error:
        password = None
    first = (text.strip().splitlines() or [""])[0]
    return first.replace(str(password), "***") if password else first
