"""The signed head and the sealer that keeps it current.

Between two checkpoints the newest records are anchored by nothing outside the
database, so deleting them would go unnoticed. Sealing closes that gap: when the head
moved since the last seal, :meth:`~.store.Ledger.seal` writes a checkpoint (which moves the
anchor) and signs that head into ``<anchor stem>.head.json`` next to the anchor, with the
ledger key, atomically and monotonically (the same file discipline as :mod:`.anchor`, its
own format). :func:`sealing` seals on a timer while a server runs, and once more at
shutdown, so only records younger than the interval are ever unanchored;
:func:`.verify.verify` reports how many are.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from .anchor import HEAD_FORMAT, Anchor, read_anchor

if TYPE_CHECKING:
    from .store import Ledger

log = logging.getLogger(__name__)

#: Seconds between seals while the controller serves (``--ledger-seal-interval``).
DEFAULT_SEAL_INTERVAL = 60.0


def head_path(anchor_path: Path) -> Path:
    """Where the signed head of the ledger anchored at ``anchor_path`` lives."""
    return anchor_path.with_suffix(".head.json")


def read_head(path: Path) -> Anchor | None:
    """The signed head at ``path``, None when there is none yet (see :func:`.read_anchor`)."""
    return read_anchor(path, HEAD_FORMAT)


def _seal_logged(ledger: Ledger) -> None:
    try:
        sealed = ledger.seal()
    except Exception:  # the timer must outlive a database hiccup; the next tick retries
        log.exception("ledger seal failed")
        return
    if sealed is not None:
        log.debug("ledger sealed", extra={"seq": sealed.seq})


@contextlib.contextmanager
def sealing(ledger: Ledger, interval: float = DEFAULT_SEAL_INTERVAL) -> Iterator[None]:
    """Seal ``ledger`` every ``interval`` seconds while the block runs, and once on leaving
    it (a clean shutdown leaves no unanchored tail)."""
    if interval <= 0:
        raise ValueError(f"the ledger seal interval must be > 0 seconds, got {interval!r}")
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(interval):
            _seal_logged(ledger)

    thread = threading.Thread(target=tick, daemon=True, name="ledger-seal")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        _seal_logged(ledger)
