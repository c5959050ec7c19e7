"""A throw-away PostgreSQL server for the tests: Debian's PostgreSQL binaries (installed
by scripts/bootstrap.sh), a cluster in a per-run temporary directory owned by the
``postgres`` system user (PostgreSQL refuses to run as root), listening on a free
loopback port only (its socket stays in that directory), stopped and removed at the end
even when the tests fail.

The superuser ``aegis`` logs in over loopback without a password (trust); every other
login needs its password (scram-sha-256), so a test that logs in as a role someone created
(the dynamic credentials of Vault's database engine) proves the password too."""

from __future__ import annotations

import contextlib
import ipaddress
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from harness import free_port

PG_ROOT = Path("/usr/lib/postgresql")


class PostgresMissing(RuntimeError):
    pass


def pg_bin() -> Path:
    versions = sorted((p for p in PG_ROOT.glob("*/bin") if (p / "initdb").exists()),
                      key=lambda p: int(p.parent.name), reverse=True)
    if not versions:
        raise PostgresMissing(f"no PostgreSQL server binaries under {PG_ROOT}: run "
                              "scripts/bootstrap.sh (it installs Debian's postgresql)")
    return versions[0]


def _as_postgres(*cmd: str | Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups",
                           *map(str, cmd)], capture_output=True, text=True, timeout=timeout,
                          check=True, cwd="/")


@dataclass
class PgServer:
    port: int
    created: int = 0
    #: addresses besides loopback it listens on (only logins with a password, from there)
    hosts: tuple[str, ...] = ()

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://aegis@127.0.0.1:{self.port}/{database}"

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=aegis dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]

    @contextlib.contextmanager
    def database(self) -> Iterator[str]:
        """A fresh, empty database for one test; dropped afterwards."""
        self.created += 1
        name = f"aegis_test_{self.created}"
        self._admin(f"CREATE DATABASE {name}")
        try:
            yield self.url(name)
        finally:
            self._admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@contextlib.contextmanager
def postgres_server(prefix: str, hosts: tuple[str, ...] = (),
                    durable: bool = False) -> Iterator[PgServer]:
    """A running server; ``database()`` gives each test its own database. ``hosts``: other
    addresses of this machine to listen on too (a lab fleet's bridge address), where
    clients of the same subnet log in with a password (never as the superuser).
    ``durable``: fsync on, as in production (the tests run without it)."""
    binaries = pg_bin()
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise PostgresMissing("no 'postgres' system user: install Debian's postgresql") from None
    root = Path(tempfile.mkdtemp(prefix=f"{prefix}-pg-"))
    shutil.chown(root, "postgres", "postgres")
    data, port = root / "data", free_port()
    started = False
    try:
        _as_postgres(binaries / "initdb", "-D", data, "-U", "aegis", "--auth=trust",
                     "--encoding=UTF8", "--no-sync")
        hba = data / "pg_hba.conf"
        hba.write_text("local all all trust\n"
                       "host all aegis 127.0.0.1/32 trust\nhost all aegis ::1/128 trust\n"
                       "host all all 127.0.0.1/32 scram-sha-256\n"
                       "host all all ::1/128 scram-sha-256\n"
                       + "".join(f"host all all {ipaddress.ip_network(f'{h}/24', strict=False)}"
                                 " scram-sha-256\n" for h in hosts))
        shutil.chown(hba, "postgres", "postgres")
        _as_postgres(binaries / "pg_ctl", "-D", data, "-l", root / "server.log", "-w",
                     "-o", f"-c listen_addresses={','.join(('127.0.0.1', *hosts))} "
                           f"-c port={port} "
                           f"-c unix_socket_directories={root} "
                           f"-c fsync={'on' if durable else 'off'}", "start")
        started = True
        yield PgServer(port, hosts=hosts)
    finally:
        if started:
            with contextlib.suppress(subprocess.SubprocessError):
                _as_postgres(binaries / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)
