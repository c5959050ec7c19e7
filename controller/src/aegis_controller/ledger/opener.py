"""Open the ledger a :class:`~aegis_controller.settings.Settings` names: for reading (the
database must exist) or for writing (with the signing key, schema migrated)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import db
from .keys import load_signer
from .store import DEFAULT_CHECKPOINT_EVERY, Ledger

if TYPE_CHECKING:
    from ..settings import Settings


def open_ledger(settings: Settings, *, write: bool,
                checkpoint_every: int | None = None) -> Ledger:
    """The ledger ``settings`` name (with its signing key when ``write``)."""
    signer = load_signer(settings.private_key) if write else None
    engine = db.open_engine(settings.db_url, must_exist=not write)
    if write:
        db.upgrade(engine)
    return Ledger(engine, signer=signer, anchor_path=settings.anchor_path,
                  checkpoint_every=checkpoint_every or DEFAULT_CHECKPOINT_EVERY)
