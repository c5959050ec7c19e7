"""A small real service for the leased-secrets tests: it logs in to PostgreSQL with the
credential the agent renders on tmpfs, runs a query every half second, and on SIGHUP (its
reload command) reads the file again and reconnects.

    python3 secret_consumer.py CREDENTIAL_FILE STATUS_FILE

The credential file holds ``username=...`` and ``password=...`` lines plus ``host``,
``port`` and ``dbname``. After every query the service replaces STATUS_FILE (JSON) with
what it saw: the login it is connected as, queries that worked, the last error, reloads.
It never writes the password anywhere. Runs with psycopg from the tests' venv or from the
node's own venv.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import psycopg


def _read(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs}


def main(cred: Path, status: Path) -> None:
    state = {"user": None, "ok": 0, "error": None, "reloads": 0, "pid": os.getpid()}
    reload = [False]
    signal.signal(signal.SIGHUP, lambda *_: reload.__setitem__(0, True))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    conn = None
    while True:
        if reload[0]:
            state["reloads"] += 1
            if conn is not None:
                conn.close()
                conn = None
        reload[0] = False
        try:
            if conn is None:
                c = _read(cred)
                conn = psycopg.connect(host=c.get("host", "127.0.0.1"), port=c.get("port", 5432),
                                       dbname=c.get("dbname", "postgres"), user=c["username"],
                                       password=c["password"], autocommit=True,
                                       connect_timeout=3)
            state["user"] = conn.execute("SELECT current_user").fetchone()[0]
            state["ok"] += 1
            state["error"] = None
        except (psycopg.Error, OSError, KeyError) as e:
            state["error"] = type(e).__name__
            if conn is not None:
                conn.close()
            conn = None
        tmp = status.with_name(status.name + ".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(status)
        time.sleep(0.5)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
