"""The secret sink: the node's Vault token and leased secrets, held in memory, rendered
on tmpfs, renewed in a thread, wiped on quarantine.

States: ``empty`` (nothing fetched yet), ``held`` (a token, files rendered and renewed),
``wiped`` (quarantine or a controller trust state other than ``trusted``: files removed,
token revoked; nothing is served again until a new fetch-secrets order comes while the
node is trusted), ``expired`` (the token ran out while Vault could not be reached).

- :meth:`SecretSink.fetch` (order ``fetch-secrets``): the order's role must be this
  node's, the directory tmpfs; the wrapping token is looked up (creation path) and
  unwrapped once, the secret_id logs in, every declared secret is read and the files
  rendered. A refresh (a new order while secrets are held) switches to the new token and
  credentials, re-renders, runs the reloads, then revokes the previous token
  ``revoke_delay`` seconds later (its database logins end with it).
- the renewal thread renews the token and each database lease at ``fraction`` of its
  TTL (± ``jitter``), re-reads the KV fields at each token renewal (a changed value:
  re-render, that file's reload, ``secrets_rotated``), and reads new database credentials
  when a lease can no longer be renewed for its full TTL (its max TTL is near) while the
  token lives on. Vault unreachable: nothing is wiped early, it backs off and reports
  ``secrets_renew_failed`` once per outage; a file whose lease really ran out is wiped
  then (``secrets_expired``).
- :meth:`SecretSink.wipe`: overwrite and unlink every file, revoke the token (in the
  background: never holds up a quarantine), forget it, ``secrets_wiped``.

The token, the secret_id and the values are never logged, evented, put in a repr or
written anywhere but the rendered files. What the sink keeps beside the files
(``.aegis-sink.json`` in the tmpfs directory) is when each file's lease ends, so an
agent restarted without its token still wipes them on time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aegis_protocol.commands import FetchSecrets, parse
from aegis_protocol.events import Event, Severity, agent_event
from aegis_protocol.secrets import (
    SECRETS_EXPIRED,
    SECRETS_FETCHED,
    SECRETS_RENEW_FAILED,
    SECRETS_ROTATED,
    SECRETS_UNWRAP_FAILED,
    SECRETS_WIPED,
    SecretsReport,
)

from ..config import SecretFile, SecretsConfig
from .tmpfs import SinkDirError, check_tmpfs, ids, wipe_file, wipe_leftovers, write_secret
from .vault_session import DbCreds, Login, UnwrapRefused, VaultError, VaultSession

log = logging.getLogger("aegis.agent.secrets")

MIN_DELAY = 1.0
MAX_BACKOFF = 30.0
RELOAD_TIMEOUT = 30.0
REVOKE_TIMEOUT = 5.0
META = ".aegis-sink.json"

DbKey = tuple[str, str]  # (mount, role)
KvKey = tuple[str, str]  # (mount, path)


class SecretsError(RuntimeError):
    """A fetch or rotate that could not be done (one line, never a secret)."""


@dataclass
class _Lease:
    creds: DbCreds = field(repr=False)
    base_ttl: int
    expires: float  # monotonic
    next_renew: float  # monotonic


@dataclass
class _Held:
    login: Login = field(repr=False)
    expires_at: int  # epoch: the token's max TTL
    token_expires: float  # monotonic: the end of its current TTL
    next_renew: float
    leases: dict[DbKey, _Lease] = field(default_factory=dict, repr=False)
    kv: dict[KvKey, dict[str, Any]] = field(default_factory=dict, repr=False)


class SecretSink:
    def __init__(self, cfg: SecretsConfig, record: Callable[[list[Event]], None]) -> None:
        self.cfg = cfg
        self._record = record
        self._lock = threading.RLock()
        self._held: _Held | None = None
        self._generation = 0  # moves whenever the held token changes or goes
        self._wipes = 0
        self.state = "empty"
        self.trust: str | None = None
        self._rendered: dict[str, str] = {}  # file name -> sha256 of its content (memory)
        self._gone: set[str] = set()  # files wiped or expired: a new render reloads them
        self._orphans: dict[str, float] = {}  # files of an earlier run -> epoch they end
        self._outage = False
        self._failures = 0
        self._retry_at = 0.0
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None
        self._load_orphans()

    # -- events --------------------------------------------------------------------------------
    def _event(self, what: str, severity: Severity = "info", **data: Any) -> None:
        data = {k: v for k, v in data.items() if v is not None}
        self._record([agent_event(what, severity, role=self.cfg.role, **data)])
        (log.warning if severity in ("warning", "critical") else log.info)(
            "secrets: %s", what, extra={"secrets": data})

    def _session(self, timeout: float | None = None) -> VaultSession:
        return VaultSession(self.cfg.url, self.cfg.ca_file,
                            **({"timeout": timeout} if timeout else {}))

    def _delay(self, ttl: float) -> float:
        j = self.cfg.jitter
        return max(MIN_DELAY, ttl * self.cfg.fraction * (1 + random.uniform(-j, j)))  # noqa: S311

    # -- orders ----------------------------------------------------------------------------------
    def fetch(self, args: dict[str, Any]) -> str:
        """The ``fetch-secrets`` order: returns the SecretsReport JSON (ack detail)."""
        order: FetchSecrets = parse("fetch-secrets", args)
        if order.role != self.cfg.role:
            raise SecretsError(f"fetch-secrets for AppRole {order.role!r} refused: this node's "
                               f"AppRole is {self.cfg.role!r} (secrets.role)")
        if self.trust not in (None, "trusted"):
            raise SecretsError(f"fetch-secrets refused: the controller's last answer says this "
                               f"node is {self.trust!r}, not trusted")
        check_tmpfs(self.cfg.dir)  # before the single-use token is spent
        for f in self.cfg.files:
            ids(f.owner, f.group)
        wipes = self._wipes
        held = self._log_in(order)
        return self._install(held, wipes)

    def _log_in(self, order: FetchSecrets) -> _Held:
        """Unwrap (path checked first), log in, read every secret; nothing is kept if any
        step fails (the new token is revoked)."""
        with self._session() as s:
            try:
                secret_id = s.unwrap_secret_id(order.wrapped_secret_id, self.cfg.approle_mount,
                                               self.cfg.role)
            except UnwrapRefused as e:
                self._event(SECRETS_UNWRAP_FAILED, "critical", error=str(e))
                raise SecretsError(str(e)) from None
            except VaultError as e:
                raise SecretsError(str(e)) from None
            try:
                login = s.login(self.cfg.approle_mount, self.cfg.role_id, secret_id)
            except VaultError as e:
                raise SecretsError(str(e)) from None
            del secret_id
            try:
                held = self._new_held(s, login)
                for f in self.cfg.files:  # every file can be rendered before anything moves
                    f.render(self._values(held, f))
            except (VaultError, SecretsError) as e:
                with contextlib.suppress(VaultError):
                    s.revoke_self(login.token)
                raise SecretsError(str(e)) from None
        return held

    def _install(self, held: _Held, wipes: int) -> str:
        """Serve ``held``: files, renewal, the previous token revoked after revoke_delay."""
        with self._lock:
            if self._wipes != wipes or self.trust not in (None, "trusted"):
                # a quarantine or a distrust came while the order ran: serve nothing
                self._revoke_later(held.login, delay=0.0)
                raise SecretsError("fetch-secrets abandoned: the secrets were wiped while it "
                                   "ran (quarantine or the controller's trust state)")
            old, was = self._held, self.state
            self._generation += 1
            self._held, self.state = held, "held"
            self._outage, self._failures, self.last_error = False, 0, None
            self._orphans.clear()
            try:
                changed = self._render(held)
                failed = None
            except (OSError, KeyError, SinkDirError, SecretsError) as e:
                failed = f"rendering the files failed: {type(e).__name__}: {e}"
            else:
                self._save_meta()
        if failed is not None:  # never half-served: take everything back
            if old is not None:
                self._revoke_later(old.login, delay=0.0)
            self.wipe(failed)
            raise SecretsError(failed)
        self._start_thread()
        if old is not None:
            self._revoke_later(old.login)
        self._event(SECRETS_FETCHED, accessor=held.login.accessor, refresh=old is not None,
                    before=was, files=",".join(f.name for f in self.cfg.files),
                    changed=",".join(changed) or None)
        return self._report(held).model_dump_json()

    def rotate(self, _args: dict[str, Any] | None = None) -> str:
        """The ``rotate`` order (what=secrets): read every secret again (new database
        credentials), re-render, reload what changed."""
        with self._lock:
            held, gen = self._held, self._generation
        if held is None:
            raise SecretsError(f"no secrets held ({self.state}): send a fetch-secrets order")
        try:
            with self._session() as s:
                kv, leases = self._read_all(s, held.login.token)
        except VaultError as e:
            raise SecretsError(str(e)) from None
        with self._lock:
            if gen != self._generation:
                raise SecretsError("the secrets were wiped or refreshed meanwhile")
            held.kv, held.leases = kv, leases
            changed = self._render(held)
            self._save_meta()
        self._wake.set()
        if changed:
            self._event(SECRETS_ROTATED, files=",".join(changed), cause="rotate order")
        return self._report(held).model_dump_json()

    def set_trust(self, trust: str | None) -> None:
        """The controller's answer to a heartbeat: anything but ``trusted`` wipes."""
        if trust is None:
            return
        self.trust = trust
        if trust != "trusted":
            self.wipe(f"controller trust state {trust}")

    def wipe(self, reason: str) -> dict[str, Any]:
        """Overwrite and remove every file, revoke the token (background), forget it."""
        with self._lock:
            held, self._held = self._held, None
            self._generation += 1
            self._wipes += 1
            wiped = self._wipe_files([f.name for f in self.cfg.files])
            self._orphans.clear()
            self._save_meta()
            if held is None and not wiped:
                return {"wiped": [], "revoked": False}
            self.state = "wiped"
        self._wake.set()
        if held is not None:
            self._revoke_later(held.login, delay=0.0)
        self._event(SECRETS_WIPED, "notice", reason=reason[:200], files=",".join(wiped) or None,
                    accessor=held.login.accessor if held else None)
        return {"wiped": wiped, "revoked": held is not None}

    def close(self) -> None:
        """Stop renewing (agent stop): files stay until their leases end (the next agent
        wipes them then, from the kept end times); the token is forgotten, not revoked, so
        a restart does not cut consumers off."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=REVOKE_TIMEOUT + 1)
        with self._lock:
            self._held = None

    def status(self) -> dict[str, Any]:
        with self._lock:
            held = self._held
            now = time.monotonic()
            present = sorted(f.name for f in self.cfg.files if (self.cfg.dir / f.name).exists())
            out: dict[str, Any] = {"state": self.state, "role": self.cfg.role,
                                   "dir": str(self.cfg.dir), "files": present,
                                   "trust": self.trust, "vault_unreachable": self._outage,
                                   "last_error": self.last_error}
            if held is not None:
                due = self._next_due(held)
                out.update(accessor=held.login.accessor, expires_at=held.expires_at,
                           token_ttl_left=round(max(0.0, held.token_expires - now), 1),
                           leases=len(held.leases),
                           next_renewal_s=round(max(0.0, due - now), 1))
            elif self._orphans:
                out["orphans_end_at"] = {k: int(v) for k, v in self._orphans.items()}
            return out

    # -- reading -------------------------------------------------------------------------------
    def _new_held(self, s: VaultSession, login: Login) -> _Held:
        t0 = time.monotonic()
        expires_at = s.max_expiry(login.token, login.ttl) if login.renewable \
            else int(time.time() + login.ttl)
        held = _Held(login, expires_at, t0 + login.ttl, t0 + self._delay(login.ttl))
        held.kv, held.leases = self._read_all(s, login.token)
        return held

    def _read_all(self, s: VaultSession, token: str) -> tuple[dict[KvKey, dict[str, Any]],
                                                                 dict[DbKey, _Lease]]:
        kv: dict[KvKey, dict[str, Any]] = {}
        leases: dict[DbKey, _Lease] = {}
        for f in self.cfg.files:
            if f.kv is not None and (f.kv.mount, f.kv.path) not in kv:
                kv[(f.kv.mount, f.kv.path)] = s.read_kv(token, f.kv.mount, f.kv.path)
            if f.database is not None and (f.database.mount, f.database.role) not in leases:
                leases[(f.database.mount, f.database.role)] = self._lease(
                    s.db_creds(token, f.database.mount, f.database.role), time.monotonic())
        return kv, leases

    def _lease(self, creds: DbCreds, t0: float) -> _Lease:
        return _Lease(creds, creds.ttl, t0 + creds.ttl,
                      t0 + self._delay(creds.ttl) if creds.renewable else t0 + creds.ttl)

    def _values(self, held: _Held, f: SecretFile) -> dict[str, str]:
        if f.kv is not None:
            data = held.kv.get((f.kv.mount, f.kv.path), {})
            if f.kv.field not in data:
                raise SecretsError(f"KV {f.kv.mount}/{f.kv.path} has no field {f.kv.field!r} "
                                   f"(file {f.name})")
            return {"value": str(data[f.kv.field])}
        assert f.database is not None
        creds = held.leases[(f.database.mount, f.database.role)].creds
        return {"username": creds.username, "password": creds.password}

    # -- files ---------------------------------------------------------------------------------
    def _render(self, held: _Held) -> list[str]:
        """Write every file whose content changed; run the reload of each that replaced
        content a consumer may have read (a file there before, or wiped earlier)."""
        check_tmpfs(self.cfg.dir)
        wipe_leftovers(self.cfg.dir)
        changed, reloads = [], []
        for f in self.cfg.files:
            content = f.render(self._values(held, f))
            digest = hashlib.sha256(content).hexdigest()
            path = self.cfg.dir / f.name
            existed = path.exists()
            if digest == self._rendered.get(f.name) and existed:
                continue
            uid, gid = ids(f.owner, f.group)
            write_secret(self.cfg.dir, f.name, content, uid, gid, f.mode)
            if existed or f.name in self._gone:
                changed.append(f.name)
                if f.reload and f.reload not in reloads:
                    reloads.append(f.reload)
            self._rendered[f.name] = digest
            self._gone.discard(f.name)
        for argv in reloads:
            self._reload(argv)
        return changed

    def _reload(self, argv: list[str]) -> None:
        try:
            r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                               timeout=RELOAD_TIMEOUT, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            self._event(SECRETS_ROTATED, "warning", reload=" ".join(argv)[:200],
                        reload_error=f"{type(e).__name__}: {e}"[:300])
            return
        if r.returncode != 0:
            self._event(SECRETS_ROTATED, "warning", reload=" ".join(argv)[:200],
                        reload_error=f"exit {r.returncode}: "
                        + r.stderr.decode(errors="replace").strip()[:200])

    def _wipe_files(self, names: list[str]) -> list[str]:
        wiped = []
        for name in names:
            try:
                if wipe_file(self.cfg.dir / name):
                    wiped.append(name)
            except OSError as e:
                log.error("secrets: cannot wipe %s: %s", name, e)
            self._rendered.pop(name, None)
            self._gone.add(name)
        return wiped

    def _files_of(self, key: DbKey | None) -> list[str]:
        """Files that depend on database lease ``key`` (None: on the token alone: kv)."""
        return [f.name for f in self.cfg.files
                if (f.database is not None and (f.database.mount, f.database.role) == key)
                or (key is None and f.kv is not None)]

    def _save_meta(self) -> None:
        """When each file's secret ends (epoch), beside the files: no secret in it."""
        ends: dict[str, float] = dict(self._orphans)
        held = self._held
        if held is not None:
            shift = time.time() - time.monotonic()
            for f in self.cfg.files:
                end = held.token_expires
                if f.database is not None:
                    end = min(end, held.leases[(f.database.mount, f.database.role)].expires)
                ends[f.name] = end + shift
        path = self.cfg.dir / META
        try:
            if not ends:
                path.unlink(missing_ok=True)
                return
            tmp = path.with_name(META + ".tmp")
            tmp.write_text(json.dumps({"role": self.cfg.role, "ends": ends}))
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
        except OSError as e:
            log.warning("secrets: cannot keep the files' end times: %s", e)

    def _load_orphans(self) -> None:
        try:
            ends = json.loads((self.cfg.dir / META).read_text()).get("ends", {})
            self._orphans = {str(k): float(v) for k, v in ends.items()}
        except (OSError, ValueError, AttributeError, TypeError):
            self._orphans = {}
        known = {f.name for f in self.cfg.files}
        present = {n for n in known if (self.cfg.dir / n).exists()}
        # a file of this config with no known end (the note was lost): it cannot be
        # renewed by this run, end it now rather than serve it for ever
        for name in present - set(self._orphans):
            self._orphans[name] = time.time()
        self._orphans = {k: v for k, v in self._orphans.items() if k in present}
        if self._orphans:
            self._start_thread()

    # -- renewal -------------------------------------------------------------------------------
    def _start_thread(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                self._wake.set()
                return
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name="aegis-secrets",
                                            daemon=True)
            self._thread.start()

    def _next_due(self, held: _Held) -> float:
        times = [held.next_renew, held.token_expires]
        for lease in held.leases.values():
            times += [lease.next_renew, lease.expires]
        due = min(times)
        if self._outage:
            due = max(due, min(self._retry_at, held.token_expires,
                               *(le.expires for le in held.leases.values())))
        return due

    def _run(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                held, gen = self._held, self._generation
                if held is None and not self._orphans:
                    self._thread = None
                    return
                if held is None:
                    due = min(self._orphans.values()) - time.time() + time.monotonic()
                else:
                    due = self._next_due(held)
            wait = due - time.monotonic()
            if wait > 0:
                self._wake.wait(wait)
                self._wake.clear()
                continue
            try:
                if held is None:
                    self._expire_orphans()
                else:
                    self._round(held, gen)
            except Exception as e:  # the thread must live on; say what broke, no secret
                self.last_error = f"{type(e).__name__}: {e}"[:300]
                log.error("secrets: renewal round failed: %s", self.last_error)
                self._stopping.wait(MIN_DELAY)

    def _expire_orphans(self) -> None:
        with self._lock:
            now = time.time()
            ended = sorted(n for n, end in self._orphans.items() if end <= now)
            if not ended:
                return
            wiped = self._wipe_files(ended)
            for n in ended:
                self._orphans.pop(n, None)
            self._save_meta()
            self.state = "expired"
        self._event(SECRETS_EXPIRED, "warning", files=",".join(wiped) or None,
                    cause="lease of an earlier agent run ended")

    def _expire(self, held: _Held, gen: int, now: float) -> bool:
        """Wipe what ran out; True when the token itself did (nothing left to renew)."""
        with self._lock:
            if gen != self._generation:
                return True
            if held.token_expires <= now:
                self._held = None
                self._generation += 1
                wiped = self._wipe_files([f.name for f in self.cfg.files])
                self.state = "expired"
                self._save_meta()
                self._event(SECRETS_EXPIRED, "warning", files=",".join(wiped) or None,
                            cause="token TTL ran out", accessor=held.login.accessor)
                return True
            for key, lease in list(held.leases.items()):
                if lease.expires <= now and lease.creds.lease_id:
                    wiped = self._wipe_files(self._files_of(key))
                    lease.creds = DbCreds("", 0, False, "", "")
                    lease.expires, lease.next_renew = float("inf"), now
                    self._save_meta()
                    self._event(SECRETS_EXPIRED, "warning", files=",".join(wiped) or None,
                                cause=f"lease of {key[0]}/creds/{key[1]} ran out")
        return False

    def _round(self, held: _Held, gen: int) -> None:
        now = time.monotonic()
        if self._expire(held, gen, now):
            return
        try:
            with self._session() as s:
                kv_new, renewed = self._renew(s, held, now)
        except VaultError as e:
            self._failed(e)
            return
        if self._outage:
            log.info("secrets: Vault answers again")
        self._outage, self._failures, self.last_error = False, 0, None
        with self._lock:
            if gen != self._generation:
                return
            causes = []
            if kv_new is not None and kv_new != held.kv:
                held.kv = kv_new
                causes.append("KV value changed")
            if renewed:
                held.leases.update(renewed)
                causes.append("new database login")
            changed = self._render(held) if causes else []
            self._save_meta()
        if changed:
            self._event(SECRETS_ROTATED, files=",".join(changed), cause="; ".join(causes))

    def _renew(self, s: VaultSession, held: _Held, now: float
               ) -> tuple[dict[KvKey, dict[str, Any]] | None, dict[DbKey, _Lease]]:
        """Renew what is due; the KV values read again with the token's renewal, and new
        database credentials where a lease ran out or cannot be renewed for long."""
        token = held.login.token
        kv_new = None
        renewed: dict[DbKey, _Lease] = {}
        if now >= held.next_renew:
            t0 = time.monotonic()
            ttl = s.renew_self(token, held.login.ttl)
            held.token_expires = t0 + ttl
            held.next_renew = t0 + (self._delay(ttl) if ttl > MIN_DELAY * 2 else ttl)
            kv_new = {k: s.read_kv(token, *k) for k in held.kv}
        token_end = held.expires_at - time.time() + time.monotonic()
        for key, lease in held.leases.items():
            if now < lease.next_renew:
                continue
            if not lease.creds.lease_id:  # ran out while Vault was away: a new one
                renewed[key] = self._lease(s.db_creds(token, *key), time.monotonic())
                continue
            t0 = time.monotonic()
            ttl = s.renew_lease(token, lease.creds.lease_id, lease.base_ttl)
            lease.expires = t0 + ttl
            lease.next_renew = t0 + self._delay(ttl)
            if ttl < lease.base_ttl and t0 + ttl < token_end - 1:
                # capped by its max TTL while the token lives on: a new login now
                renewed[key] = self._lease(s.db_creds(token, *key), time.monotonic())
            elif ttl < lease.base_ttl:
                lease.next_renew = lease.expires  # it ends with the token: nothing to gain
        return kv_new, renewed

    def _failed(self, e: VaultError) -> None:
        self._failures += 1
        self._retry_at = time.monotonic() + min(MAX_BACKOFF, 2.0 ** (self._failures - 1))
        self.last_error = str(e)
        if not self._outage:
            self._outage = True
            self._event(SECRETS_RENEW_FAILED, "warning", error=str(e)[:300],
                        unreachable=e.unreachable)

    # -- revocation ----------------------------------------------------------------------------
    def _revoke_later(self, login: Login, delay: float | None = None) -> None:
        """revoke-self with ``login``'s token after ``delay`` (default revoke_delay), in a
        thread: best effort, never holds up the caller."""
        wait = self.cfg.revoke_delay if delay is None else delay

        def revoke() -> None:
            if wait:
                time.sleep(wait)
            try:
                with self._session(timeout=REVOKE_TIMEOUT) as s:
                    s.revoke_self(login.token)
            except VaultError as e:
                log.warning("secrets: revoking token %s failed: %s", login.accessor, e)

        threading.Thread(target=revoke, name="aegis-secrets-revoke", daemon=True).start()

    def _report(self, held: _Held) -> SecretsReport:
        return SecretsReport(
            role=self.cfg.role, accessor=held.login.accessor, token_ttl=held.login.ttl,
            expires_at=held.expires_at,
            leases=[le.creds.lease_id for le in held.leases.values() if le.creds.lease_id],
            logins=[le.creds.username for le in held.leases.values() if le.creds.username],
            files=[f.name for f in self.cfg.files])
