"""The agent's join of exec events with sshd's log (aegis_agent.ssh_sessions): an exec
whose sshd session process logged an Aegis grant's certificate is marked with the grant;
other logins (a plain key, another CA's certificate, a pid reused by one) and processes
outside any session are not; the log is followed across appends, a line written in two
parts, and rotation."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from aegis_agent.ssh_sessions import Session, SshSessions, parse_line
from aegis_protocol.access import SESSION_GRANT, SESSION_SERIAL, request_of_key_id, ssh_key_id
from aegis_protocol.events import Event

pytestmark = pytest.mark.unit

RID = "0b7e2a6c-51c1-4a53-9a0e-3f1e0e1c2d3a"
CERT = ("Dec  7 14:30:01 db1 sshd[{pid}]: Accepted publickey for root from 10.0.0.9 port "
        "50812 ssh2: ED25519-CERT SHA256:AbC ID {key_id} (serial {serial}) CA ED25519 "
        "SHA256:XyZ\n")
PLAIN = ("Dec  7 14:30:02 db1 sshd[{pid}]: Accepted publickey for root from 10.0.0.9 port "
         "50813 ssh2: ED25519 SHA256:AbC\n")


def exec_of(ssh_pid: int = 0, outer: int = 0) -> Event:
    data: dict = {"pid": 9, "filename": "/usr/bin/id"}
    if ssh_pid:
        data["ssh_pid"] = ssh_pid
    if outer:
        data["ssh_pid_outer"] = outer
    return Event(ts_ns=1, kind="exec", data=data)


def test_key_ids_round_trip_and_foreign_ones_name_no_request() -> None:
    assert request_of_key_id(ssh_key_id("adam", RID)) == RID
    for other in ("adam", "adam@laptop", "x@aegis-access/", "x@aegis-access/a b"):
        assert request_of_key_id(other) is None


def test_lines_of_sshd() -> None:
    assert parse_line(CERT.format(pid=4242, key_id=f"adam@aegis-access/{RID}",
                                  serial=77)) == (4242, Session(RID, "77",
                                                                f"adam@aegis-access/{RID}",
                                                                "root"))
    assert parse_line(PLAIN.format(pid=4243)) == (4243, None)
    assert parse_line(CERT.format(pid=4244, key_id="ops-laptop", serial=5)) == (4244, None)
    assert parse_line("sshd[4245]: Connection closed by 10.0.0.9 port 1") is None


def test_execs_of_a_grant_session_are_marked_others_are_not(tmp_path: Path) -> None:
    log = tmp_path / "auth.log"
    log.write_text(CERT.format(pid=100, key_id=f"adam@aegis-access/{RID}", serial=77)
                   + PLAIN.format(pid=200))
    s = SshSessions(log)
    events = s.tag([exec_of(100), exec_of(200), exec_of(), exec_of(300),
                    exec_of(300, outer=100)])
    assert [(e.data.get(SESSION_GRANT), e.data.get(SESSION_SERIAL)) for e in events] == [
        (RID, "77"), (None, None), (None, None), (None, None), (RID, "77")]
    # pid 100 reused by a login without a grant's certificate: no longer the grant's
    with log.open("a") as f:
        f.write(PLAIN.format(pid=100))
    assert SESSION_GRANT not in s.tag([exec_of(100)])[0].data


def test_the_log_is_followed_across_partial_lines_and_rotation(tmp_path: Path) -> None:
    log = tmp_path / "auth.log"
    line = CERT.format(pid=100, key_id=f"adam@aegis-access/{RID}", serial=77)
    log.write_text(line[:40])
    s = SshSessions(log)
    assert SESSION_GRANT not in s.tag([exec_of(100)])[0].data
    with log.open("a") as f:
        f.write(line[40:])
    assert s.tag([exec_of(100)])[0].data[SESSION_GRANT] == RID
    rotated = tmp_path / "auth.log.1"
    log.rename(rotated)
    log.write_text(CERT.format(pid=101, key_id=f"dora@aegis-access/{RID}", serial=78))
    assert s.tag([exec_of(101)])[0].data[SESSION_SERIAL] == "78"
    log.unlink()  # unreadable: what is known stays, nothing fails
    assert s.tag([exec_of(100)])[0].data[SESSION_GRANT] == RID


def test_the_daemons_exec_path_marks_decoded_records(tmp_path: Path) -> None:
    """What the daemon puts between the exec ring and the spool when ssh_krl.session_log
    is set: the exec decoder, then the marks."""
    from aegis_agent.bpf import layout
    from aegis_agent.events import ExecDecoder, RingIds

    log = tmp_path / "auth.log"
    log.write_text(CERT.format(pid=31, key_id=f"adam@aegis-access/{RID}", serial=77))
    raw = layout.EXEC_EVENT.pack(7, 1, 0, 500, 499, 0, 0, 0, 31, 0, b"id", b"/usr/bin/id")
    other = layout.EXEC_EVENT.pack(7, 1, 0, 501, 1, 0, 0, 0, 0, 0, b"id", b"/usr/bin/id")
    to_events = SshSessions(log).marking(ExecDecoder(0, RingIds(1, boot_id="b")).events)
    marked, plain = to_events([(0, raw), (328, other)])
    assert (marked.data[SESSION_GRANT], marked.data[SESSION_SERIAL]) == (RID, "77")
    assert SESSION_GRANT not in plain.data


def _append_later(log: Path, text: str, delay: float) -> threading.Thread:
    def write() -> None:
        time.sleep(delay)
        with log.open("a") as f:
            f.write(text)
    t = threading.Thread(target=write)
    t.start()
    return t


def test_a_line_that_comes_after_the_exec_still_marks_it(tmp_path: Path) -> None:
    """sshd runs the session as soon as it logs the login: the exec can reach the agent
    before syslog or journald has delivered the line (here 50 ms later)."""
    log = tmp_path / "auth.log"
    log.write_text(PLAIN.format(pid=5))
    s = SshSessions(log, wait=2.0)
    s.tag([exec_of(5)])  # the log read once: appended lines are new from here on
    writer = _append_later(log, CERT.format(pid=100, key_id=f"adam@aegis-access/{RID}",
                                            serial=77), 0.05)
    try:
        events = s.tag([exec_of(100), exec_of(5)])
    finally:
        writer.join()
    assert events[0].data[SESSION_GRANT] == RID
    assert SESSION_GRANT not in events[1].data
    assert (s.unmatched, s.waits) == (0, 1)


def test_a_line_that_never_comes_costs_the_bound_once_and_is_counted(tmp_path: Path) -> None:
    log = tmp_path / "auth.log"
    log.write_text(PLAIN.format(pid=5))
    s = SshSessions(log, wait=0.2)
    start = time.monotonic()
    events = s.tag([exec_of(300), exec_of(300), exec_of(5)])
    waited = time.monotonic() - start
    assert not any(SESSION_GRANT in e.data for e in events)
    assert 0.2 <= waited < 2.0  # the bound, not more (generous: a loaded machine)
    assert (s.unmatched, s.waits) == (2, 1)
    # known pids (named, or given up on) never wait again
    s.tag([exec_of(300), exec_of(5)])
    assert (s.unmatched, s.waits) == (3, 1)
    assert s.status()["unmatched"] == 3
    # a line that comes late still marks the pid's later execs
    with log.open("a") as f:
        f.write(CERT.format(pid=300, key_id=f"adam@aegis-access/{RID}", serial=9))
    assert s.tag([exec_of(300)])[0].data[SESSION_SERIAL] == "9"


def test_session_log_is_journal_or_an_absolute_path() -> None:
    from pydantic import ValidationError

    from aegis_agent.config import SshKrlConfig

    assert SshKrlConfig(session_log="journal").session_log == "journal"
    assert SshKrlConfig(session_log="/var/log/auth.log").session_log == Path(
        "/var/log/auth.log")
    assert SshKrlConfig().session_log is None
    with pytest.raises(ValidationError, match=r"session_log: 'journald' is neither 'journal'"
                       r".*absolute path"):
        SshKrlConfig(session_log="journald")
