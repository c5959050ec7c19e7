"""Leased secrets end to end on this machine, for tests and ``./aegis bench secrets``: a
real OpenBao dev server wired by the ``aegis.fleet.vault`` role, a real PostgreSQL, a real
controller with its secrets gate, the real agent daemon (``aegis-agent run`` with
segmentation and monitors off, so it needs no network namespace) rendering on a tmpfs it
is given, and a small real service (``tests/secret_consumer.py``) that logs in to
PostgreSQL with the rendered credential and is reloaded with SIGHUP.

Everything is made under a per-run prefix and removed on exit, even on failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import harness_vault as hv

from harness import REPO, OpenBao, openbao_dev
from harness_controller import Server, operator_client
from harness_pg import PgServer, postgres_server

AGENT = str(Path(sys.executable).with_name("aegis-agent"))


def until(pred: Callable[[], Any], timeout: float, what: str, step: float = 0.05) -> Any:
    """``pred()``'s first truthy value within ``timeout`` seconds, else AssertionError."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)


@contextlib.contextmanager
def tmpfs(path: Path) -> Iterator[Path]:
    """A small tmpfs at ``path`` with the options the agent role mounts; unmounted after."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0711,noexec,nosuid,nodev,size=1m",
                    "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@dataclass
class SecretsLab:
    bao: OpenBao
    pg: PgServer
    wiring: hv.Wiring
    server: Server
    root: Path
    secrets_dir: Path
    node: str
    consumer: subprocess.Popen | None = None
    agent: subprocess.Popen | None = None
    _logs: list[Path] = field(default_factory=list)

    # -- the node ------------------------------------------------------------------------
    @property
    def node_dir(self) -> Path:
        """The node's own files (config, token, agent state, spool, logs)."""
        return self.root / self.node

    @property
    def config_file(self) -> Path:
        return self.node_dir / "agent.yaml"

    def new_node(self, node: str) -> None:
        """Point the lab at another node id (a fresh agent: write_config, start_agent)."""
        if self.agent is not None:
            self.kill_agent(signal.SIGTERM)
        self.node = node
    @property
    def status_file(self) -> Path:
        return self.root / "consumer-status.json"

    def start_consumer(self) -> None:
        self.consumer = subprocess.Popen(
            [sys.executable, str(REPO / "tests" / "secret_consumer.py"),
             str(self.secrets_dir / "db.env"), str(self.status_file)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def consumer_status(self) -> dict:
        try:
            return json.loads(self.status_file.read_text())
        except (OSError, ValueError):
            return {}

    def write_config(self) -> None:
        assert self.consumer is not None, "start the consumer first: it is the reload target"
        w = self.wiring
        reload = ["kill", "-HUP", str(self.consumer.pid)]
        d = self.node_dir
        d.mkdir(parents=True, exist_ok=True)
        (d / "token").write_text(self.server.token(self.node))
        cfg = {
            "node_id": self.node, "monitors": {"exec": False, "connect": False},
            "spool": {"dir": str(d / "spool")},
            "control": {"socket": str(d / "run" / "agent.sock")},
            "controller": {"url": self.server.url,
                           "ca_file": str(self.server.state / "ca" / "ca.pem"),
                           "token_file": str(d / "token"),
                           "state_dir": str(d / "state"),
                           "golden_file": str(d / "golden.json"),
                           "interval": 0.3, "attest_interval": 3600, "max_backoff": 1},
            "secrets": {
                "url": w.bao.addr, "approle_mount": w.approle_mount,
                "role": w.approle("web"), "role_id": w.role_ids["web"],
                "dir": str(self.secrets_dir),
                "files": [
                    {"name": "db.env", "database": {"mount": w.names["vault_database_mount"],
                                                    "role": "web"},
                     "template": f"host=127.0.0.1\nport={self.pg.port}\ndbname=postgres\n"
                                 "username={username}\npassword={password}\n",
                     "reload": reload},
                    {"name": "api_key", "kv": {"mount": w.names["vault_kv_mount"],
                                               "path": "web/app", "field": "api_key"},
                     "reload": reload}]},
        }
        self.config_file.write_text(json.dumps(cfg))

    def start_agent(self) -> None:
        log = self.node_dir / f"agent-{len(self._logs)}.log"
        self._logs.append(log)
        with log.open("w") as out:
            self.agent = subprocess.Popen([AGENT, "--config", str(self.config_file), "run"],
                                          stdout=out, stderr=subprocess.STDOUT)
        until(lambda: self.agent_cli("status", check=False) is not None, 30, "the agent")

    def kill_agent(self, sig: int = signal.SIGKILL) -> None:
        assert self.agent is not None
        self.agent.send_signal(sig)
        self.agent.wait(timeout=30)
        self.agent = None

    def agent_cli(self, *args: str, check: bool = True) -> Any:
        p = subprocess.run([AGENT, "--config", str(self.config_file), *args],
                           capture_output=True, text=True, timeout=30, check=False)
        if p.returncode:
            if check:
                raise AssertionError(f"aegis-agent {' '.join(args)}: {p.stderr}")
            return None
        with contextlib.suppress(ValueError):
            return json.loads(p.stdout)
        return p.stdout

    def agent_logs(self) -> list[Path]:
        return list(self._logs)

    # -- the controller ------------------------------------------------------------------
    def node_state(self) -> str | None:
        out = self.server.ctl("node", "show", self.node)
        return json.loads(out.stdout).get("state") if out.returncode == 0 else None

    def secrets(self) -> dict:
        out = self.server.ctl("node", "secrets", self.node)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def live_grant(self) -> dict | None:
        grants = [g for g in self.secrets()["grants"] if g["revoke_requested_at"] is None]
        return grants[-1] if grants else None

    def ledger(self) -> list[dict]:
        out = self.server.ctl("ledger", "show")
        assert out.returncode == 0, out.stderr
        return [json.loads(line) for line in out.stdout.splitlines()]

    def order(self, kind: str, **args: object) -> float:
        """An operator's order; the wall-clock time (s) the controller accepted it."""
        with operator_client(self.server) as op:
            r = op.post("/v1/orders", json={"node_id": self.node, "kind": kind, "args": args})
            accepted = time.time()
        assert r.status_code == 201, r.text
        return accepted

    def trust(self) -> None:
        """Secrets role ``web``; the expected profile pinned from the node's first
        measurement: the node becomes trusted, and the gate sends it its secrets."""
        role = self.server.ctl("node", "secrets-role", self.node, "web")
        assert role.returncode == 0, role.stderr
        until(lambda: self.node_state() == "enrolled"
              and json.loads(self.server.ctl("node", "show", self.node).stdout)
              .get("measurement"), 60, "the node's first measurement")
        profile = self.node_dir / "profile.json"
        profile.write_text("{}")
        pinned = self.server.ctl("profile", "set", self.node, str(profile))
        assert pinned.returncode == 0, pinned.stderr
        until(lambda: self.node_state() == "trusted", 60, "trusted")


@contextlib.contextmanager
def secrets_lab(prefix: str, *, token_ttl: str = "6s", db_ttl: str = "6s",  # noqa: S107 - durations
                max_ttl: str = "300s") -> Iterator[SecretsLab]:
    """Everything started and wired, the agent not yet (``write_config``, ``start_agent``)."""
    root = Path(tempfile.mkdtemp(prefix=f"{prefix}-secrets-"))
    lab: SecretsLab | None = None
    try:
        with openbao_dev(prefix) as bao, postgres_server(prefix) as pg, \
                tmpfs(root / "secrets") as secrets_dir:
            wiring = hv.wire(bao, hv.make_pg_admin(pg), root / "wiring", token_ttl=token_ttl,
                             token_max_ttl=max_ttl, db_ttl=db_ttl, db_max_ttl=max_ttl)
            state = root / "controller"
            state.mkdir()
            server = Server(state, None)
            assert server.ctl("keys", "init").returncode == 0
            server.start("--secrets-token-file", str(wiring.controller_token_file),
                         "--vault-addr", bao.addr,
                         "--secrets-approle-mount", wiring.approle_mount,
                         "--secrets-prefix", wiring.prefix, "--secrets-verify-dsn",
                         f"host=127.0.0.1 port={pg.port} user=aegis dbname=postgres")
            lab = SecretsLab(bao, pg, wiring, server, root, secrets_dir,
                             f"{prefix}-node".lower()[:60])
            try:
                yield lab
            finally:
                for proc in (lab.agent, lab.consumer):
                    if proc is not None and proc.poll() is None:
                        proc.kill()
                        proc.wait(timeout=30)
                if server.proc is not None:
                    server.kill()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def secret_values(lab: SecretsLab) -> list[str]:
    """The secret values the lab's node holds now (read from its tmpfs) and the tokens."""
    values = [lab.wiring.controller_token, lab.bao.token, *lab.wiring.kv_values.values()]
    with contextlib.suppress(OSError):
        for line in (lab.secrets_dir / "db.env").read_text().splitlines():
            if line.startswith("password="):
                values.append(line.split("=", 1)[1])
    return values


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
