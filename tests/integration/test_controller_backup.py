"""Encrypted backups of the controller's state, against a real controller and a real
enrolled node (the agent's own uplink, in-process): back up, destroy the state directory,
restore, and the node goes on with its existing certificate. And the refusals: a tampered
ledger, a wrong identity, a non-empty state directory, a non-empty database, an unknown
format, no recipients."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import sqlite3
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pyrage
import pytest
import sqlalchemy as sa

from aegis_agent.config import ControllerConfig
from aegis_agent.spool import Spool
from aegis_agent.uplink import Uplink
from aegis_controller.ledger import open_ledger
from aegis_controller.settings import Settings
from aegis_protocol.events import agent_event
from conftest import sub_prefix
from harness_controller import Server, controller_server, operator_client
from harness_pg import PgServer

pytestmark = pytest.mark.integration
NODE = "keeper1"
KEYS = ("ca/ca.key", "keys/ledger.key", "keys/orders.key", "tls/server.key")


def _uplink(server: Server, tmp_path: Path) -> Uplink:
    token = tmp_path / "token"
    token.write_text(server.token(NODE))
    cfg = ControllerConfig(url=server.url, ca_file=tmp_path / "ca.pem", token_file=token,
                           state_dir=tmp_path / "node", golden_file=tmp_path / "golden.json")
    shutil.copy(server.state / "ca" / "ca.pem", cfg.ca_file)  # the node's own copy
    done: list[tuple[str, dict]] = []
    up = Uplink(cfg, NODE, Spool(tmp_path / "spool"),
                {"quarantine": lambda args: done.append(("quarantine", args)) or "done"})
    up.done = done  # type: ignore[attr-defined]
    up.next_attest = float("inf")
    up.enroll()
    return up


def _identity(server: Server, path: Path) -> str:
    out = server.ctl("backup-identity", "--out", str(path))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["recipient"]


def _backup(server: Server, out: Path, *recipient_args: str,
            env: dict[str, str] | None = None) -> None:
    done = server.ctl("backup", "--out", str(out), *recipient_args, env=env)
    assert done.returncode == 0, done.stderr
    assert "encrypting" in done.stderr  # a progress line per step


def _events(server: Server, what: str) -> int:
    with server.engine().connect() as conn:
        rows = conn.exec_driver_sql("SELECT data FROM events").scalars().all()
    return sum(1 for r in rows if (json.loads(r) if isinstance(r, str) else r).get("what") == what)


def _order(server: Server) -> str:
    with operator_client(server, "restorer") as op:
        r = op.post("/v1/orders", json={"node_id": NODE, "kind": "quarantine",
                                        "args": {"level": "soft"}})
    assert r.status_code == 201, r.text
    return r.json()["order"]["id"]


def _status(server: Server, order_id: str) -> str:
    rows = [json.loads(line) for line in server.ctl("orders").stdout.splitlines()]
    return next(o["status"] for o in rows if o["order_id"] == order_id)


def _destroy_and_restore(server: Server, archive: Path, identity: Path,
                         *extra: str) -> dict:
    server.kill(signal.SIGTERM)  # a clean stop: the controller seals its ledger
    shutil.rmtree(server.state)
    done = server.ctl("restore", str(archive), "--identity", str(identity), *extra)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _check_node_goes_on(server: Server, up: Uplink) -> None:
    server.start()
    verify = server.ctl("ledger", "verify")
    assert verify.returncode == 0 and verify.stdout.startswith("ledger OK"), verify.stdout
    up.spool.append([agent_event("after_restore")])
    oid = _order(server)
    last = up.tick(now=10_000)
    assert last["error"] is None, last
    assert _events(server, "after_restore") == 1 and _events(server, "before_backup") == 1
    assert _status(server, oid) == "done"
    assert up.done == [("quarantine", {"level": "soft"})]  # type: ignore[attr-defined]
    # what the restored controller appended chains on to the restored ledger
    assert server.ctl("ledger", "checkpoint").returncode == 0
    assert server.ctl("ledger", "verify").returncode == 0


@pytest.fixture
def server() -> Iterator[Server]:
    with controller_server(sub_prefix(), None) as srv:
        yield srv


# -- archives made by hand: what an attacker who knows a recipient could write ---------
def _open(archive: Path, identity: Path) -> dict[str, bytes]:
    keys = [pyrage.x25519.Identity.from_str(line) for line in identity.read_text().splitlines()
            if line.startswith("AGE-SECRET-KEY-")]
    plain = pyrage.decrypt(archive.read_bytes(), keys)
    with tarfile.open(fileobj=io.BytesIO(plain), mode="r:gz") as tar:
        files = {m.name: tar.extractfile(m) for m in tar.getmembers()}
        return {name: f.read() for name, f in files.items() if f is not None}


def _seal(members: dict[str, bytes], recipient: str, out: Path, *,
          rehash: bool = True) -> Path:
    manifest = json.loads(members["manifest.json"])
    if rehash:
        for name, data in members.items():
            if name != "manifest.json":
                manifest["members"][name]["sha256"] = hashlib.sha256(data).hexdigest()
        members = {**members, "manifest.json": json.dumps(manifest).encode()}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out.write_bytes(pyrage.encrypt(buf.getvalue(),
                                   [pyrage.x25519.Recipient.from_str(recipient)]))
    return out


def _edit_ledger(db_bytes: bytes, tmp: Path) -> bytes:
    path = tmp / "edited.db"
    path.write_bytes(db_bytes)
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode=DELETE")
        changed = conn.execute("UPDATE ledger_records SET body = '{\"forged\": true}' "
                               "WHERE seq = 2").rowcount
    assert changed == 1
    return path.read_bytes()


def _nothing_written(state: Path) -> None:
    assert not state.exists() or not any(state.iterdir())
    assert not list(state.parent.glob(f".{state.name}.restore-*"))


def test_backup_destroy_restore_and_the_node_keeps_working(server: Server,
                                                           tmp_path: Path) -> None:
    up = _uplink(server, tmp_path)
    up.spool.append([agent_event("before_backup")])
    assert up.tick(now=0)["error"] is None
    keys = {name: (server.state / name).read_bytes() for name in KEYS}
    identity = tmp_path / "backup.id"
    archive = tmp_path / "controller.age"
    _backup(server, archive, "--recipient", _identity(server, identity))

    blob = archive.read_bytes()
    assert blob.startswith(b"age-encryption.org/v1\n")
    assert os.stat(archive).st_mode & 0o777 == 0o600
    for name, pem in keys.items():  # no plaintext key bytes, whole or any line of them
        assert pem not in blob, name
        assert not any(line in blob for line in pem.splitlines() if len(line) > 20), name
    assert not list(server.state.glob(".backup-*"))  # the scratch copy is gone
    assert [p.name for p in tmp_path.glob("*controller.age*")] == ["controller.age"]

    done = _destroy_and_restore(server, archive, identity)
    assert done["kept"] == [] and done["records"] > 0
    for name, pem in keys.items():
        assert (server.state / name).read_bytes() == pem
        assert os.stat(server.state / name).st_mode & 0o077 == 0, name
    _check_node_goes_on(server, up)


def test_a_tampered_or_unreadable_archive_is_refused_and_nothing_written(
        server: Server, tmp_path: Path) -> None:
    _uplink(server, tmp_path)
    identity = tmp_path / "backup.id"
    recipient = _identity(server, identity)
    archive = tmp_path / "controller.age"
    _backup(server, archive, "--recipient", recipient)
    members = _open(archive, identity)
    target = tmp_path / "restored"

    def restore(path: Path, *extra: str) -> tuple[int, str]:
        out = server.ctl("--state-dir", str(target), "restore", str(path), *extra)
        _nothing_written(target)
        return out.returncode, out.stderr

    # a ledger record edited, the manifest rehashed and the archive re-encrypted
    forged = {**members, "database/controller.db":
              _edit_ledger(members["database/controller.db"], tmp_path)}
    rc, err = restore(_seal(forged, recipient, tmp_path / "forged.age"),
                      "--identity", str(identity))
    assert rc == 1 and "ledger does not verify at seq 2: edited" in err, err
    assert "nothing was restored" in err

    # the same edit without rehashing: the manifest catches it first
    rc, err = restore(_seal(forged, recipient, tmp_path / "bare.age", rehash=False),
                      "--identity", str(identity))
    assert rc == 2 and "does not match its sha256" in err, err

    other = tmp_path / "other.id"
    _identity(server, other)
    rc, err = restore(archive, "--identity", str(other))
    assert rc == 2 and "not encrypted to this identity" in err, err

    future = json.loads(members["manifest.json"])
    future["format"] = "aegis-controller-backup/9"
    rc, err = restore(_seal({**members, "manifest.json": json.dumps(future).encode()},
                            recipient, tmp_path / "future.age", rehash=False),
                      "--identity", str(identity))
    assert rc == 2 and "'aegis-controller-backup/9'" in err and "restores" in err, err

    (tmp_path / "junk.age").write_bytes(b"not an archive at all\n")
    rc, err = restore(tmp_path / "junk.age", "--identity", str(identity))
    assert rc == 2 and "not an age archive" in err, err

    (tmp_path / "wrong.id").write_text("age1notasecretkey\n")
    rc, err = restore(archive, "--identity", str(tmp_path / "wrong.id"))
    assert rc == 2 and "AGE-SECRET-KEY-1" in err, err

    # a pinned ledger key that is not the archive's
    other_state = tmp_path / "other-state"
    assert server.ctl("--state-dir", str(other_state), "keys", "init").returncode == 0
    rc, err = restore(archive, "--identity", str(identity), "--public-key",
                      str(other_state / "keys" / "ledger.pub"))
    assert rc == 1 and "is not the one in" in err, err


def test_restore_over_a_non_empty_state_dir_needs_force_and_keeps_the_old_one(
        server: Server, tmp_path: Path) -> None:
    identity = tmp_path / "backup.id"
    archive = tmp_path / "controller.age"
    _backup(server, archive, "--recipient", _identity(server, identity))
    server.kill(signal.SIGTERM)
    before = sorted(p.name for p in server.state.iterdir())

    refused = server.ctl("restore", str(archive), "--identity", str(identity))
    assert refused.returncode == 2 and "is not empty" in refused.stderr
    assert "--force" in refused.stderr
    assert sorted(p.name for p in server.state.iterdir()) == before

    done = server.ctl("restore", str(archive), "--identity", str(identity), "--force")
    assert done.returncode == 0, done.stderr
    (kept,) = json.loads(done.stdout)["kept"]
    assert sorted(p.name for p in Path(kept).iterdir()) == before
    assert server.ctl("ledger", "verify").returncode == 0
    shutil.rmtree(kept)


def test_backups_taken_while_the_ledger_is_written_and_sealed_restore_and_verify(
        server: Server, tmp_path: Path) -> None:
    """The anchor and signed head move after each commit; every archive must still carry
    the marks that go with its copy of the database (checkpoints every 2 records here)."""
    ledger = open_ledger(Settings.resolve(server.state, server.db), write=True,
                         checkpoint_every=2)
    stop = threading.Event()

    def write() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            ledger.append("order", NODE, {"n": n})
            if n % 5 == 0:
                ledger.seal()

    writer = threading.Thread(target=write, daemon=True)
    identity = tmp_path / "backup.id"
    recipient = _identity(server, identity)
    writer.start()
    try:
        for i in range(4):
            _backup(server, tmp_path / f"b{i}.age", "--recipient", recipient)
    finally:
        stop.set()
        writer.join()
        ledger.engine.dispose()
    for i in range(4):
        target = tmp_path / f"restored{i}"
        done = server.ctl("--state-dir", str(target), "restore", str(tmp_path / f"b{i}.age"),
                          "--identity", str(identity))
        assert done.returncode == 0, done.stderr
        assert server.ctl("--state-dir", str(target), "ledger", "verify").returncode == 0


def test_an_anchor_kept_outside_the_state_dir_is_restored_to_its_place(
        tmp_path: Path) -> None:
    """``--anchor`` elsewhere (say, a directory shipped off the host): restore puts the
    anchor and signed head back there, and keeps an existing one aside only with --force."""
    ctl = Server(tmp_path / "state", None)
    env = {"AEGIS_LEDGER_ANCHOR": str(tmp_path / "marks" / "ledger.anchor.json")}
    assert ctl.ctl("keys", "init", env=env).returncode == 0
    for n in range(3):
        assert ctl.ctl("ledger", "append", "--kind", "order", "--subject", NODE, "--json",
                       json.dumps({"n": n}), env=env).returncode == 0
    assert ctl.ctl("ledger", "checkpoint", env=env).returncode == 0
    anchor = (tmp_path / "marks" / "ledger.anchor.json").read_bytes()
    identity = tmp_path / "backup.id"
    archive = tmp_path / "controller.age"
    recipient = _identity(ctl, identity)
    wrong = ctl.ctl("backup", "--out", str(archive), "--recipient", recipient)
    assert wrong.returncode == 2 and "pass --anchor" in wrong.stderr, wrong.stderr
    _backup(ctl, archive, "--recipient", recipient, env=env)
    shutil.rmtree(ctl.state)

    refused = ctl.ctl("restore", str(archive), "--identity", str(identity), env=env)
    assert refused.returncode == 2 and "ledger.anchor.json exists" in refused.stderr
    _nothing_written(ctl.state)
    done = ctl.ctl("restore", str(archive), "--identity", str(identity), "--force", env=env)
    assert done.returncode == 0, done.stderr
    (kept,) = json.loads(done.stdout)["kept"]
    assert Path(kept).read_bytes() == anchor == (tmp_path / "marks/ledger.anchor.json").read_bytes()
    assert not (ctl.state / "ledger.anchor.json").exists()
    verify = ctl.ctl("ledger", "verify", env=env)
    assert verify.returncode == 0 and "anchor at seq 4 matches" in verify.stdout, verify.stdout


def test_backup_needs_recipients_and_names_the_fix(server: Server, tmp_path: Path) -> None:
    out = server.ctl("backup", "--out", str(tmp_path / "x.age"))
    assert out.returncode == 2 and "--recipient age1" in out.stderr, out.stderr
    out = server.ctl("backup", "--out", str(tmp_path / "x.age"), "--recipient", "bogus")
    assert out.returncode == 2 and "not an age (age1...)" in out.stderr, out.stderr
    assert not (tmp_path / "x.age").exists()


def test_postgresql_backup_restores_into_an_empty_database(
        pg_server: PgServer, tmp_path: Path) -> None:
    with pg_server.database() as source, controller_server(sub_prefix(), source) as server:
        up = _uplink(server, tmp_path)
        up.spool.append([agent_event("before_backup")])
        assert up.tick(now=0)["error"] is None
        identity = tmp_path / "backup.id"
        recipients = tmp_path / "recipients"
        recipients.write_text(f"# operators\n{_identity(server, identity)}\n")
        archive = tmp_path / "controller.age"
        _backup(server, archive, "--recipients-file", str(recipients))
        assert "database/controller.pgdump" in _open(archive, identity)

        server.kill(signal.SIGTERM)
        shutil.rmtree(server.state)
        refused = server.ctl("restore", str(archive), "--identity", str(identity))
        assert refused.returncode == 2 and "is not empty" in refused.stderr, refused.stderr
        _nothing_written(server.state)

        with pg_server.database() as target:
            server.db = target
            # the archive's ledger key swapped for another (manifest rehashed): the dump is
            # loaded, does not verify, and the database is emptied again
            other = tmp_path / "other-state"
            assert server.ctl("--state-dir", str(other), "keys", "init").returncode == 0
            members = _open(archive, identity)
            forged = {**members,
                      "state/keys/ledger.pub": (other / "keys/ledger.pub").read_bytes()}
            recipient = recipients.read_text().split()[-1]
            refused = server.ctl("restore", str(_seal(forged, recipient, tmp_path / "f.age")),
                                 "--identity", str(identity))
            assert refused.returncode == 1, refused.stderr
            assert "bad_signature" in refused.stderr and "emptied again" in refused.stderr
            _nothing_written(server.state)
            with server.engine().connect() as conn:
                assert sa.inspect(conn).get_table_names() == []

            done = server.ctl("restore", str(archive), "--identity", str(identity))
            assert done.returncode == 0, done.stderr
            _check_node_goes_on(server, up)
            server.kill(signal.SIGTERM)
