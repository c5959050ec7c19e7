"""The agent's link to the controller: enroll once, then heartbeat, attest, forward the
spool and run signed orders, each on its own period, with back-off when the controller
cannot be reached.

Nothing secret is written to disk: the bootstrap token is read from a file that
provisioning put on tmpfs and is removed once used; the node's keys are generated here
and stay here (0600); the client certificate and the controller's CA and order key are
public.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509

from aegis_protocol import routes
from aegis_protocol.enrollment import (
    Heartbeat,
    HeartbeatAck,
    RenewResponse,
    node_csr,
    renew_request,
)
from aegis_protocol.events import MAX_BATCH, EventBatch, agent_event
from aegis_protocol.files import write_atomically
from aegis_protocol.signing import load_public_key

from . import inventory, tls_pair
from .config import ControllerConfig
from .identity import identity_key
from .measure import collect, signed_report
from .orders import FileReplayGuard, OrderExecutor
from .secrets import SecretSink
from .spool import Spool
from .unwrap import UnwrapError, unwrap_bootstrap

log = logging.getLogger("aegis.agent.uplink")


class UplinkError(RuntimeError):
    pass


@dataclass
class Uplink:
    cfg: ControllerConfig
    node_id: str
    spool: Spool
    handlers: dict[str, Callable[[dict[str, Any]], str]]
    backoff: float = 0.0
    next_try: float = 0.0
    next_attest: float = 0.0  # monotonic; 0: attest at the next tick (start)
    last: dict[str, object] = field(default_factory=dict)
    # the agent core's enforcement state for the attestation report (daemon.bpf_state)
    bpf_state: Callable[[], list[dict[str, str | int]]] | None = None
    # the leased secrets (config ``secrets``): fetch-secrets and rotate secrets orders,
    # and the trust state of each heartbeat answer
    secrets: SecretSink | None = None
    # events lost so far per source (daemon.lost_events); each heartbeat carries their
    # increase since the last one the controller answered
    lost_events: Callable[[], dict[str, int]] | None = None
    # the last packet per granted edge, from the daemon's last sweep (edge -> wall ns)
    edges_seen: Callable[[], dict[str, int]] | None = None
    _unwrapped: str | None = field(default=None, repr=False)
    #: one run of orders at a time (the round's, or one the long poll announced)
    _orders_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _inventory_sent: str | None = None  # digest of the inventory the controller holds

    def __post_init__(self) -> None:
        # orders the link runs itself; the daemon's handlers act on the agent core
        self.handlers = {**self.handlers, "attest": self._attest_order,
                         "rotate": self._rotate_order, "fetch-secrets": self._fetch_secrets}

    @property
    def state(self) -> Path:
        return self.cfg.state_dir

    def _ctx(self, with_cert: bool = True) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.cfg.ca_file)
        if with_cert:
            ctx.load_cert_chain(self.state / "node.pem", self.state / "tls.key")
        return ctx

    def _client(self, with_cert: bool = True) -> httpx.Client:
        return httpx.Client(base_url=self.cfg.url, verify=self._ctx(with_cert), timeout=30)

    @property
    def enrolled(self) -> bool:
        return (self.state / "node.pem").exists() and (self.state / "order.key").exists()

    def _bootstrap_token(self) -> str:
        """The bootstrap token: from the token file, unwrapped first when it is a
        response-wrapping token (``vault`` configured). An unwrapped token is held in
        memory until enrollment succeeds; the spent wrapping token is removed at once."""
        if self._unwrapped is not None:
            return self._unwrapped
        token_file = self.cfg.token_file
        try:
            token = token_file.read_text().strip()
        except OSError as e:
            raise UplinkError(f"not enrolled and no bootstrap token at {token_file} "
                              f"({e.strerror}); provisioning puts it there") from None
        if self.cfg.vault is None:
            return token
        try:
            self._unwrapped = unwrap_bootstrap(self.cfg.vault, token, self.node_id)
        except UnwrapError as e:
            if e.spent:  # keep no useless file, and say so once
                token_file.unlink(missing_ok=True)
                self.spool.append([agent_event("bootstrap_unwrap_failed", "critical",
                                               error=str(e))])
            raise UplinkError(str(e)) from None
        token_file.unlink(missing_ok=True)
        return self._unwrapped

    def enroll(self) -> None:
        token_file = self.cfg.token_file
        token = self._bootstrap_token()
        self.state.mkdir(parents=True, exist_ok=True, mode=0o700)
        ident = identity_key(self.state / "identity.key")
        from aegis_protocol.signing import public_key_text

        key = tls_pair.next_key(self.state)
        body = {"node_id": self.node_id, "token": token,
                "csr_pem": node_csr(key, self.node_id),
                "identity_key": public_key_text(ident.public_key())}
        with self._client(with_cert=False) as c:
            r = c.post(routes.ENROLL, json=body)
        if r.status_code != 200:
            raise UplinkError(f"enrollment refused ({r.status_code}): {r.json().get('detail')}")
        answer = r.json()
        tls_pair.install(self.state, key, answer["certificate_pem"].encode())
        write_atomically(self.state / "order.key", answer["order_key"].encode())
        token_file.unlink(missing_ok=True)  # one-time: never keep it
        self._unwrapped = None
        log.info("enrolled with the controller", extra={"node": self.node_id,
                                                        "not_after": answer["not_after"]})

    def attest(self) -> dict:
        with self._client() as c:
            nonce = c.get(routes.ATTEST_CHALLENGE).raise_for_status().json()["nonce"]
            report = signed_report(identity_key(self.state / "identity.key"), self.node_id,
                                   nonce, collect(self.cfg.golden_file,
                                                  bpf=self.bpf_state() if self.bpf_state
                                                  else None))
            verdict = c.post(routes.ATTEST, json=report.model_dump(mode="json"))
        if verdict.status_code != 200:
            raise UplinkError(f"attestation refused ({verdict.status_code}): "
                              f"{verdict.json().get('detail')}")
        return verdict.json()

    def _attest_order(self, _args: dict[str, Any]) -> str:
        verdict = self.attest()
        self.last["attestation"] = verdict
        self.next_attest = time.monotonic() + self.cfg.attest_interval
        return f"attested: {verdict['state']}"

    def _rotate_order(self, args: dict[str, Any]) -> str:
        if args.get("what") == "secrets":
            if self.secrets is None:
                raise UplinkError("cannot rotate secrets: this agent has no secrets section "
                                  "in its config")
            return self.secrets.rotate(args)
        if args.get("what") != "certificate":
            raise UplinkError(f"cannot rotate {args.get('what')!r}: certificate or secrets")
        return f"certificate rotated, valid until {self.rotate_certificate()}"

    def _fetch_secrets(self, args: dict[str, Any]) -> str:
        if self.secrets is None:
            raise UplinkError("cannot fetch secrets: this agent has no secrets section in its "
                              "config")
        return self.secrets.fetch(args)

    def certificate_expires(self) -> float:
        cert = x509.load_pem_x509_certificate((self.state / "node.pem").read_bytes())
        return cert.not_valid_after_utc.timestamp()

    def rotate_certificate(self) -> int:
        """A new TLS key made here (kept until its certificate arrives, so a retry after
        a lost reply asks for the same one and gets the same certificate), a CSR for it
        signed by the identity key, and the controller's new certificate; key and
        certificate are switched as one pair (the old certificate stops working once the
        new one is used)."""
        key = tls_pair.next_key(self.state)
        req = renew_request(identity_key(self.state / "identity.key"), self.node_id,
                            node_csr(key, self.node_id))
        with self._client() as c:
            r = c.post(routes.CERTIFICATE, json=req.model_dump(mode="json"))
        if r.status_code != 200:
            raise UplinkError(f"certificate rotation refused ({r.status_code}): "
                              f"{r.json().get('detail')}")
        answer = RenewResponse.model_validate(r.json())
        tls_pair.install(self.state, key, answer.certificate_pem.encode())
        log.info("client certificate rotated", extra={"node": self.node_id,
                                                      "not_after": answer.not_after})
        return answer.not_after

    @property
    def _lost_file(self) -> Path:
        return self.state / "lost-reported.json"

    def _lost_since_reported(self) -> tuple[dict[str, int] | None, dict[str, int]]:
        """(events lost per source now if that is not what was last reported, and the
        increase since then). A count below the one reported was reset (maps loaded anew,
        a reboot, a new process's spool): all of it is new."""
        if self.lost_events is None:
            return None, {}
        now = self.lost_events()
        try:
            reported = json.loads(self._lost_file.read_text())
        except (OSError, ValueError):
            reported = {}
        if not isinstance(reported, dict):
            reported = {}
        increase = {}
        for source, n in now.items():
            before = reported.get(source, 0)
            grown = n - before if isinstance(before, int) and n >= before else n
            if grown:
                increase[source] = grown
        return (None if now == reported else now), increase

    def heartbeat(self) -> None:
        """A heartbeat with the inventory's digest; the inventory itself only when it
        changed since the controller last took it, or when the controller asks for it.
        It carries the events lost since the last heartbeat the controller answered (the
        counts it was told are kept in the state directory, so a restart repeats none)."""
        inv = inventory.collect()
        digest = inv.digest()
        lost_now, lost = self._lost_since_reported()
        hb = Heartbeat(node_id=self.node_id, boot_id=_boot_id(), inventory_digest=digest,
                       inventory=inv if digest != self._inventory_sent else None,
                       events_lost=lost,
                       edges_seen=self.edges_seen() if self.edges_seen is not None else {})
        with self._client() as c:
            # fields at their defaults are left out: a controller of an older version,
            # which refuses fields it does not know, takes the heartbeat
            r = c.post(routes.HEARTBEAT, json=hb.model_dump(mode="json", exclude_defaults=True)
                       ).raise_for_status()
        if lost_now is not None:  # what the controller was told, for the next heartbeat
            write_atomically(self._lost_file, json.dumps(lost_now).encode(), 0o600)
        if lost:
            log.warning("events lost since the last heartbeat", extra={"lost": lost})
        if hb.inventory is not None:
            self._inventory_sent = digest
        ack = HeartbeatAck.model_validate(r.json())
        if ack.inventory_wanted:
            self._inventory_sent = None  # the controller lacks it: send it next time
        if self.secrets is not None:
            self.secrets.set_trust(ack.trust)  # not trusted: wiped before any order runs

    def forward(self, limit: int = MAX_BATCH) -> int:
        """Send what the spool holds after its cursor, batch by batch; the cursor moves
        only when the controller acknowledged a batch (at-least-once; the controller
        stores each event id once). Records the event model rejects were set aside by the
        spool's read; the cursor moves past them too."""
        sent = 0
        with self._client() as c:
            while True:
                records, upto = self.spool.read_batch(limit=limit)
                if upto <= self.spool.acked:
                    break
                if records:
                    batch = EventBatch(node_id=self.node_id, events=[e for _s, e in records])
                    c.post(routes.EVENTS, json=batch.model_dump(mode="json")).raise_for_status()
                self.spool.ack(upto)
                sent += len(records)
        return sent

    def wait_for_orders(self, wait: float) -> int:
        """The long poll: how many orders are pending for this node, answered by the
        controller as soon as there is one, or after ``wait`` seconds with none."""
        with httpx.Client(base_url=self.cfg.url, verify=self._ctx(),
                          timeout=httpx.Timeout(30, read=wait + 15)) as c:
            r = c.get(routes.ORDERS, params={"wait": wait})
        r.raise_for_status()
        return len(r.json())

    def poll_orders(self, halt: threading.Event, due: Callable[[], None]) -> None:
        """The long poll for orders until ``halt`` is set (run on a thread of its own):
        pending orders call ``due`` (the daemon then runs :meth:`run_orders_now` between
        rounds); a controller that cannot be reached is asked again after the same
        doubling wait as the rounds; one that answers at once with nothing (it holds no
        long polls) is asked once per round."""
        cc, backoff = self.cfg, 0.0
        while not halt.is_set():
            if not self.enrolled:  # the first round enrolls
                halt.wait(min(cc.interval, 1.0))
                continue
            asked = time.monotonic()
            try:
                pending = self.wait_for_orders(cc.orders_wait)
            except Exception as e:  # any failure (unreachable, refused): wait, ask again
                backoff = min(cc.max_backoff, max(1.0, backoff * 2))
                # said once per outage (the rounds report the controller link too)
                (log.warning if backoff == 1.0 else log.debug)(
                    "long poll for orders failed: %s; again in %.0f s", e, backoff)
                halt.wait(backoff)
                continue
            backoff = 0.0
            if pending:
                due()
                halt.wait(0.05)  # the daemon takes them before the next poll
            elif time.monotonic() - asked < cc.orders_wait / 2:
                halt.wait(cc.interval)

    def run_orders_now(self) -> None:
        """The orders the long poll announced, between two rounds (a failure is logged;
        the next round runs them)."""
        try:
            self.last["orders"] = self.run_orders()
        except (httpx.HTTPError, OSError, UplinkError, ValueError) as e:
            log.warning("orders announced by the controller failed: %s", e)

    def run_orders(self) -> list[dict]:
        with self._orders_lock:
            return self._run_orders()

    def _run_orders(self) -> list[dict]:
        executor = OrderExecutor(self.node_id,
                                 load_public_key((self.state / "order.key").read_text().strip()),
                                 identity_key(self.state / "identity.key"),
                                 FileReplayGuard(self.state / "order-nonces.json"), self.handlers)
        done = []
        with self._client() as c:
            pending = c.get(routes.ORDERS).raise_for_status().json()
        for signed in pending:
            ack = executor.execute(signed)
            # a new connection per ack: a rotate order has just replaced the certificate
            with self._client() as c:
                c.post(routes.order_ack(ack.ack.order_id),
                       json=ack.model_dump(mode="json")).raise_for_status()
                done.append({"order_id": str(ack.ack.order_id), "status": ack.ack.status,
                             "detail": ack.ack.detail})
        return done

    def _attest_if_due(self, now: float) -> dict | None:
        if now < self.next_attest:
            return None
        verdict = self.attest()
        self.next_attest = now + self.cfg.attest_interval
        return verdict

    def _exchange(self, now: float) -> list[str]:
        """Attestation (when due), heartbeat, forwarding and orders, each on its own: a
        failure in one (a refused attestation, a batch the controller rejects) does not
        keep a pending order from running. Returns what failed; an unreachable
        controller ends the round at once."""
        failed = []
        steps: tuple[tuple[str, Callable[[], object]], ...] = (
            ("attestation", lambda: self._attest_if_due(now)), ("heartbeat", self.heartbeat),
            ("forwarded", self.forward), ("orders", self.run_orders))
        for name, step in steps:
            try:
                result = step()
            except httpx.TransportError:
                raise
            except (httpx.HTTPError, OSError, UplinkError, ValueError) as e:
                failed.append(f"{name}: {type(e).__name__}: {e}")
                continue
            if result is not None:
                self.last[name] = result
        return failed

    def tick(self, now: float | None = None) -> dict[str, object]:
        """One round (enroll if needed, heartbeat, forward, orders); backs off on failure.

        The back-off counts from the end of the failed round, so the announced wait is the
        least time before the next attempt even when a round itself was slow."""
        given = now
        now = time.monotonic() if now is None else now
        if now < self.next_try:
            return self.last
        try:
            if not self.enrolled:
                self.enroll()
            if time.time() > self.certificate_expires() - self.cfg.renew_before:
                self.rotate_certificate()
            failed = self._exchange(now)
        except (httpx.HTTPError, OSError, UplinkError, ValueError) as e:
            failed = [f"{type(e).__name__}: {e}"]
        if failed:
            self.backoff = min(self.cfg.max_backoff, max(1.0, self.backoff * 2))
            self.next_try = (time.monotonic() if given is None else now) + self.backoff
            self.last["error"] = "; ".join(failed)
            log.warning("controller link failed; retrying in %.0f s", self.backoff,
                        extra={"error": self.last["error"]})
        else:
            self.backoff = 0.0
            self.last.update(error=None, at=time.time())
        return self.last


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""

