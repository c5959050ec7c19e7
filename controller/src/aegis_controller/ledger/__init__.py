"""The audit ledger: append-only, hash-chained, signed records of everything the
controller decides and does, with periodic signed checkpoints and an anchor file outside
the database, so that any edited, deleted, reordered or truncated record is found.

Modules, one job each:

* :mod:`.records` — record fields, kinds, canonical encoding and hash; input checks
* :mod:`.keys` — the Ed25519 ledger key (create, load, sign, verify)
* :mod:`.anchor` — the signed anchor file (atomic, monotonic)
* :mod:`.head` — the signed head file and :func:`sealing` (seal on a timer and at shutdown)
* :mod:`.store` — the table and :class:`Ledger` (append, checkpoint, seal, read)
* :mod:`.verify` — :func:`verify` and its :class:`VerifyResult`
* :mod:`.opener` — :func:`open_ledger`: the ledger a ``Settings`` names

Typical use::

    ledger = open_ledger(Settings.resolve(), write=True)   # or, by hand:
    engine = db.open_engine(url); db.upgrade(engine)
    ledger = Ledger(engine, signer=load_signer(key), anchor_path=anchor)
    ledger.append("state_change", "node1", {"from": "trusted", "to": "suspect"})
    result = ledger.verify()
"""

from .anchor import Anchor, read_anchor
from .errors import AnchorError, KeyFileError, LedgerError, LedgerInputError
from .head import DEFAULT_SEAL_INTERVAL, head_path, read_head, sealing
from .keys import Signer, Verifier, init_keys, load_signer, load_verifier
from .opener import open_ledger
from .records import APPENDABLE, GENESIS, Kind, Record
from .store import DEFAULT_CHECKPOINT_EVERY, Ledger, Recorder, records_table
from .verify import Problem, VerifyResult, verify

__all__ = [
    "APPENDABLE", "DEFAULT_CHECKPOINT_EVERY", "DEFAULT_SEAL_INTERVAL", "GENESIS", "Anchor",
    "AnchorError", "KeyFileError", "Kind", "Ledger", "LedgerError", "LedgerInputError",
    "Problem", "Record", "Recorder", "Signer", "Verifier", "VerifyResult", "head_path", "init_keys",
    "load_signer", "load_verifier", "open_ledger", "read_anchor", "read_head", "records_table",
    "sealing", "verify",
]
