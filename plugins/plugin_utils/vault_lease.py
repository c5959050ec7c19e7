# -*- coding: utf-8 -*-
# Copyright: Aegis contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Lease keepers for the aegis.fleet.vault_lease lookup and its revoking callback.

Ansible runs a task's lookups in a worker process forked per task (per host) from the
ansible-playbook process; the worker ends with ``os._exit`` when its task is done, so
neither its memory nor an ``atexit`` handler outlives the task. The Vault token a lease
must be revoked with may be known only to that worker (a lookup option), and it must not
be written to disk. So each lease gets a *keeper*: a small process started by the
lookup (``python vault_lease.py keep``), detached from the worker (its own session,
reparented when the worker ends), that receives the URL, token and lease id through a
pipe, holds them in memory only, and revokes the lease when

- the ansible-playbook process ends, however it ends (it watches the process with a
  pidfd: normal end, failure, Ctrl-C, SIGKILL), or
- it is told to (SIGUSR1/SIGTERM/SIGINT/SIGHUP): the aegis.fleet.vault_lease_revoke
  callback does that at the end of the run and waits for the result, so the leases are
  gone before ansible-playbook returns, or
- the lease's own TTL has run out (the keeper then tries once more and leaves).

Each keeper lists itself in a run directory, ``<tmp>/aegis-vault-lease-<uid>/<pid>-<start>``
(private, mode 0700; ``pid`` and ``start`` identify the ansible-playbook process), as
``<keeper pid>.lease`` holding the lease id only: never the token, never the secret.
The keeper deletes its entry once the lease is revoked, or leaves ``<pid>.failed`` with
the reason (no secret in it)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import contextlib
import ipaddress
import json
import os
import select
import signal
import ssl
import stat
import subprocess
import sys
import tempfile
import time

try:
    from http.client import HTTPConnection, HTTPSConnection
    from urllib.parse import quote, urlsplit
except ImportError:  # pragma: no cover (Python 2, never the controller)
    pass

KEEPER_MARK = "aegis-vault-lease-keeper"


class LeaseError(Exception):
    """What the caller shows the user; never holds a secret."""


def is_loopback(host):
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def checked_url(url, what):
    """``url`` when it is https://HOST, or http:// to a loopback host (the project's rule,
    aegis_protocol.urls.checked_url, which collection plugins cannot import)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        parts, host = None, ""
    if parts is None or parts.scheme not in ("http", "https") or not host:
        raise LeaseError("%s %r is not a URL: give https://HOST[:PORT]" % (what, url))
    if parts.scheme == "http" and not is_loopback(host):
        raise LeaseError("%s %r is plain http to %s, which is not loopback: use https:// "
                         "(plain http is allowed only to 127.0.0.1, ::1 or localhost)"
                         % (what, url, host))
    return url.rstrip("/")


def _start_time(pid):
    """The process's start time in clock ticks (field 22 of /proc/PID/stat)."""
    with open("/proc/%d/stat" % pid) as fh:
        return fh.read().rsplit(")", 1)[1].split()[19]


def playbook_pid():
    """The pid of the ansible-playbook (main) process: the parent when this is one of
    Ansible's forked task workers, else this process."""
    import multiprocessing

    try:
        from ansible.executor.process.worker import WorkerProcess
    except ImportError:  # pragma: no cover
        WorkerProcess = None
    parent = multiprocessing.parent_process()
    if WorkerProcess is not None and parent is not None \
            and isinstance(multiprocessing.current_process(), WorkerProcess):
        return parent.pid
    return os.getpid()


def _private_dir(path):
    """Create ``path`` (0700) or check that the existing one is ours and private."""
    with contextlib.suppress(OSError):
        os.mkdir(path, 0o700)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise LeaseError("%s is not a private directory of this user (mode 0700): remove it"
                         % path)
    return path


def run_dir(pid, create=True):
    """The run directory of the ansible-playbook process ``pid`` (created if missing, or
    None when it is missing and ``create`` is false)."""
    base = os.path.join(tempfile.gettempdir(), "aegis-vault-lease-%d" % os.getuid())
    path = os.path.join(base, "%d-%s" % (pid, _start_time(pid)))
    if not create and not os.path.lexists(path):
        return None
    _private_dir(base)
    return _private_dir(path)


def start_keeper(url, token, lease_id, ca_cert=None, expires_in=0):
    """Hand a lease to a new keeper; returns its pid once it has listed itself."""
    main = playbook_pid()
    spool = run_dir(main)
    payload = json.dumps({"url": url, "token": token, "lease_id": lease_id,
                          "ca_cert": ca_cert, "main_pid": main, "spool": spool,
                          "expires_in": int(expires_in or 0)})
    proc = subprocess.Popen(
        # -I -S: the keeper needs the standard library only, nothing from the environment
        [sys.executable, "-I", "-S", os.path.abspath(__file__.replace(".pyc", ".py")), "keep",
         KEEPER_MARK],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        close_fds=True, start_new_session=True, cwd="/")
    try:
        out = proc.communicate(payload.encode(), timeout=30)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        out = b""
    words = out.decode(errors="replace").split()
    if len(words) != 2 or words[0] != "ready":
        raise LeaseError("the lease keeper did not start (is %s able to run it?)"
                         % sys.executable)
    return int(words[1])


def revoke(url, token, lease_id, ca_cert=None, timeout=15):
    """PUT sys/leases/revoke/<lease id> (the path form, so a policy can scope it to
    ``sys/leases/revoke/<mount>/creds/<role>/*``). ``url`` has passed checked_url. The
    standard library only: the keeper runs without site-packages."""
    parts = urlsplit(url)
    if parts.scheme == "https":
        conn = HTTPSConnection(parts.hostname, parts.port, timeout=timeout,
                               context=ssl.create_default_context(cafile=ca_cert))
    else:
        conn = HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request("PUT", "%s/v1/sys/leases/revoke/%s"
                     % (parts.path.rstrip("/"), quote(lease_id, safe="/")), body=b"{}",
                     headers={"X-Vault-Token": token, "Content-Type": "application/json"})
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    if resp.status >= 300:
        try:
            errors = "; ".join(json.loads(body).get("errors") or [])
        except ValueError:
            errors = ""
        raise LeaseError("HTTP %d from %s: %s" % (resp.status, url, errors or resp.reason))


def _write(path, text):
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.rename(tmp, path)


_STOP = []


def _stop(signum, frame):
    _STOP.append(signum)


def keep():
    """The keeper's body (``python vault_lease.py keep``)."""
    for signum in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, _stop)
    job = json.loads(sys.stdin.read())
    if os.fork():  # detach: the worker's process tree may be killed, the keeper not
        os._exit(0)
    entry = os.path.join(job["spool"], "%d.lease" % os.getpid())
    _write(entry, job["lease_id"] + "\n")
    try:
        pidfd = os.pidfd_open(job["main_pid"])
    except ProcessLookupError:
        pidfd = None
    sys.stdout.write("ready %d\n" % os.getpid())
    sys.stdout.flush()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    until = time.monotonic() + job["expires_in"] + 5 if job["expires_in"] else None
    main_gone = pidfd is None
    while not main_gone and not _STOP and (until is None or time.monotonic() < until):
        main_gone = bool(select.select([pidfd], [], [], 0.25)[0])
    for signum in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    try:
        revoke(job["url"], job["token"], job["lease_id"], job["ca_cert"])
    except Exception as e:  # the reason, never the token (urllib does not quote headers)
        _write(entry.replace(".lease", ".failed"),
               "%s: %s: %s\n" % (job["lease_id"], type(e).__name__, e))
    os.unlink(entry)
    if main_gone:  # the run is over: the last keeper of a run without the callback
        with contextlib.suppress(OSError):
            os.rmdir(job["spool"])
    os._exit(0)


def _is_keeper(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as fh:
            return KEEPER_MARK.encode() in fh.read()
    except (IOError, OSError):
        return False


def _listdir(path):
    """The names in ``path``; none once the last keeper has removed it."""
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def flush(pid=None, timeout=20.0):
    """Tell every keeper of the run ``pid`` (this process by default) to revoke now and
    wait for them. Returns ``(revoked lease ids, [failure reasons])``."""
    pid = os.getpid() if pid is None else pid
    try:
        spool = run_dir(pid, create=False)
    except (LeaseError, IOError, OSError) as e:
        return [], ["run directory: %s" % e]
    if spool is None:  # nothing leased in this run
        return [], []
    pending = {}
    for name in _listdir(spool):
        if name.endswith(".lease"):
            keeper = int(name.split(".")[0])
            try:
                with open(os.path.join(spool, name)) as fh:
                    pending[name] = (keeper, fh.read().strip())
            except FileNotFoundError:  # revoked meanwhile (its TTL ran out)
                continue
            if _is_keeper(keeper):
                os.kill(keeper, signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    revoked, failures = [], []
    while pending and time.monotonic() < deadline:
        for name, (keeper, lease) in list(pending.items()):
            if not os.path.exists(os.path.join(spool, name)):
                revoked.append(lease)
                del pending[name]
            elif not _is_keeper(keeper):  # gone without revoking (killed)
                failures.append("%s: its keeper (pid %d) is gone; the lease ends at its TTL"
                                % (lease, keeper))
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(spool, name))
                del pending[name]
        time.sleep(0.05)
    failures += ["%s: not revoked within %.0f s" % (lease, timeout)
                 for keeper, lease in pending.values()]
    for name in _listdir(spool):
        if name.endswith(".failed"):
            path = os.path.join(spool, name)
            with open(path) as fh:
                reason = fh.read().strip()
            failures.append(reason)
            revoked = [lease for lease in revoked if not reason.startswith(lease + ":")]
            os.unlink(path)
    if not pending:
        with contextlib.suppress(OSError):
            os.rmdir(spool)
    return revoked, failures


if __name__ == "__main__" and sys.argv[1:2] == ["keep"]:
    keep()
