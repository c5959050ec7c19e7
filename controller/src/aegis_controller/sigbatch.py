"""Check many Ed25519 signatures of one key in worker processes.

A signature check holds the GIL (measured with cryptography's verify: two threads verify no
faster than one), so checking a long run of signatures on several cores needs processes.
Each check is libsodium's (:mod:`aegis_controller.sigcheck`). The workers are
``python -m aegis_controller.sigbatch`` children fed over pipes (not a
multiprocessing pool: its spawn start re-imports the caller's main script, its fork start
copies a threaded controller's held locks). This module imports only
:mod:`aegis_controller.sigcheck` (PyNaCl, cryptography's key type), so a worker starts
quickly; it knows nothing of what is signed beyond "``prefix`` + the bytes
of a hex digest".

Wire, one line each way per chunk: ``ID:DIGEST:SIG ID:DIGEST:SIG ...`` in, ``ok`` or
``bad ID`` (the first bad one of the chunk) out.
"""

from __future__ import annotations

import contextlib
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from aegis_controller.sigcheck import Ed25519Check, raw_public


def first_bad(check: Ed25519Check, prefix: bytes,
              items: Sequence[tuple[int, str, str]]) -> int | None:
    """The id of the first ``(id, digest_hex, sig_hex)`` whose signature over
    ``prefix + bytes.fromhex(digest_hex)`` does not verify; None when all do."""
    ok = check.ok
    for ident, digest_hex, sig_hex in items:
        try:
            signature, digest = bytes.fromhex(sig_hex), bytes.fromhex(digest_hex)
        except ValueError:
            return ident
        if not ok(signature, prefix + digest):
            return ident
    return None


def default_workers() -> int:
    """CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)


def _worker() -> int:
    """The child's loop: the key line, then one answer per chunk line until EOF."""
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    public_hex, prefix_hex = stdin.readline().split()
    check = Ed25519Check(bytes.fromhex(public_hex.decode()))
    prefix = b"" if prefix_hex == b"-" else bytes.fromhex(prefix_hex.decode())
    for line in stdin:
        items = []
        for item in line.decode("ascii").split():
            ident, digest, sig = item.split(":")
            items.append((int(ident), digest, sig))
        bad = first_bad(check, prefix, items)
        stdout.write(b"ok\n" if bad is None else f"bad {bad}\n".encode())
        stdout.flush()
    return 0


class SignaturePool:
    """Signatures fed in order, checked ``chunk`` at a time by ``workers`` child processes,
    at most two chunks per worker queued (memory stays bounded however long the input).
    :meth:`add` and :meth:`finish` return the id of a bad signature once one is found —
    the lowest of those found so far; :meth:`finish` waits for every chunk."""

    def __init__(self, key: Ed25519PublicKey, prefix: bytes, *, workers: int,
                 chunk: int = 1000) -> None:
        raw = raw_public(key)
        self.chunk = chunk
        self.items: list[str] = []
        self.bad: int | None = None
        self.error: str | None = None
        self._lock = threading.Lock()
        self._next = 0
        self._feeds: list[tuple[subprocess.Popen[bytes], queue.Queue[bytes | None],
                                threading.Thread]] = []
        try:
            for _ in range(max(1, workers)):
                self._start(raw, prefix)
        except OSError:
            self.close()
            raise

    def _start(self, raw: bytes, prefix: bytes) -> None:
        proc = subprocess.Popen([sys.executable, "-m", "aegis_controller.sigbatch"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        feed: queue.Queue[bytes | None] = queue.Queue(maxsize=2)
        header = f"{raw.hex()} {prefix.hex() or '-'}\n".encode()
        thread = threading.Thread(target=self._pump, args=(proc, feed, header), daemon=True,
                                  name="ledger-verify-feed")
        self._feeds.append((proc, feed, thread))
        thread.start()

    def _pump(self, proc: subprocess.Popen[bytes], feed: queue.Queue[bytes | None],
              header: bytes) -> None:
        """One worker's feeder thread: the key line, then each chunk and its answer."""
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(header)
            while (line := feed.get()) is not None:
                proc.stdin.write(line)
                proc.stdin.flush()
                answer = proc.stdout.readline().split()
                if not answer:
                    raise OSError(f"signature worker exited with {proc.wait()}")
                if answer[0] == b"bad":
                    with self._lock:
                        seen = int(answer[1])
                        self.bad = seen if self.bad is None else min(self.bad, seen)
        except (OSError, ValueError) as err:
            with self._lock:
                self.error = str(err)
            while feed.get() is not None:  # let the producer finish
                pass

    def add(self, ident: int, digest_hex: str, sig_hex: str) -> int | None:
        self.items.append(f"{ident}:{digest_hex}:{sig_hex}")
        if len(self.items) >= self.chunk:
            self._send()
        return self.bad

    def _send(self) -> None:
        line = (" ".join(self.items) + "\n").encode("ascii")
        self.items = []
        _, feed, _ = self._feeds[self._next % len(self._feeds)]
        self._next += 1
        feed.put(line)

    def finish(self) -> int | None:
        """Check what is left, wait for every chunk and stop the workers; the first bad id,
        or None. A worker that died raises RuntimeError (nothing is taken as verified)."""
        if self.items:
            self._send()
        self.close()
        if self.error is not None:
            raise RuntimeError(f"ledger signature check failed: {self.error}")
        return self.bad

    def close(self) -> None:
        for proc, feed, thread in self._feeds:
            feed.put(None)
            thread.join()
            if proc.stdin is not None:
                with contextlib.suppress(OSError):  # a dead worker: its error is recorded
                    proc.stdin.close()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        self._feeds = []


if __name__ == "__main__":
    sys.exit(_worker())
