"""Encrypted backups of the controller's state: one age-encrypted archive (``pyrage``)
holding the database, the keys and the ledger's anchor and signed head.

The archive, once decrypted, is a gzip'd tar:

* ``manifest.json`` (first): ``format`` (:data:`FORMAT`), ``controller_version``,
  ``created``, ``database`` (``sqlite`` or ``postgresql``), ``ledger_key_id``, and each
  other member's ``sha256``, ``size`` and ``mode`` (restored files are 0600 whatever it
  says);
* ``database/controller.db`` (an SQLite online backup, consistent while the controller
  runs) or ``database/controller.pgdump`` (``pg_dump`` custom format);
* ``state/keys/...``, ``state/ca/...``, ``state/tls/...``: the ledger, order, CA and TLS
  keys and certificates (:data:`STATE_DIRS`);
* ``ledger/anchor.json`` and ``ledger/head.json`` when they exist.

The plaintext tar exists only in memory (backup and restore hold the whole archive there:
fine for a controller's state of a few hundred MB; events are the bulk); the SQLite or
``pg_dump`` copy is made in a 0700 directory inside the state directory, removed when the
backup ends. The anchor and
head that go with the copy are chosen so that they name records it holds
(:mod:`.snapshot`), and the ledger must verify (a backup of a ledger that does not is
refused: its restore would be).

Modules, one job each:

* :mod:`.format` — member names, the format version, the errors, what both sides share
* :mod:`.age_keys` — recipients, identities, a new key pair
* :mod:`.snapshot` — the consistent copy of the database and its ledger marks
* :mod:`.writer` — :func:`backup`: pack, encrypt, write
* :mod:`.restore` — :func:`restore`: decrypt, check, stage, verify, move into place
* :mod:`.pg_tools` — ``pg_dump`` and ``pg_restore``
"""


from .age_keys import identities, new_identity, recipients
from .format import FORMAT, BackupError, LedgerRefused, progress
from .restore import restore
from .writer import backup

__all__ = ["FORMAT", "BackupError", "LedgerRefused", "backup", "identities", "new_identity",
           "progress", "recipients", "restore"]
