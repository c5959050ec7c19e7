"""Where the controller's state lives: one :class:`Settings`, resolved from explicit
values, then the environment, then the defaults (the CLI, the API server and the
aegis.fleet.audit callback all resolve it the same way).

* state directory: ``AEGIS_CONTROLLER_STATE_DIR`` (default ``/var/lib/aegis/controller``)
* database: ``AEGIS_CONTROLLER_DB`` (default SQLite ``<state>/controller.db``)
* ledger anchor: ``AEGIS_LEDGER_ANCHOR`` (default ``<state>/ledger.anchor.json``)
* keys (fixed): ``<state>/keys/ledger.key``, ``ledger.pub``, ``orders.key``; CA ``<state>/ca``
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .db import default_url
from .ledger.keys import PRIVATE_NAME, PUBLIC_NAME

DEFAULT_STATE_DIR = Path("/var/lib/aegis/controller")


@dataclass(frozen=True)
class Settings:
    state_dir: Path
    db_url: str = field(repr=False)  # may hold a password: show it with db.shown only
    anchor_path: Path

    @classmethod
    def resolve(cls, state_dir: str | Path | None = None, db_url: str | None = None,
                anchor: str | Path | None = None) -> Settings:
        """Each value as given, else from its environment variable, else the default."""
        state = Path(state_dir or os.environ.get("AEGIS_CONTROLLER_STATE_DIR")
                     or DEFAULT_STATE_DIR)
        url = db_url or os.environ.get("AEGIS_CONTROLLER_DB") or default_url(state)
        anchor_path = Path(anchor or os.environ.get("AEGIS_LEDGER_ANCHOR")
                           or state / "ledger.anchor.json")
        return cls(state_dir=state, db_url=url, anchor_path=anchor_path)

    @property
    def key_dir(self) -> Path:
        return self.state_dir / "keys"

    @property
    def private_key(self) -> Path:
        """The ledger's private key."""
        return self.key_dir / PRIVATE_NAME

    @property
    def public_key(self) -> Path:
        """The ledger's public key."""
        return self.key_dir / PUBLIC_NAME

    @property
    def order_key(self) -> Path:
        """The Ed25519 key that signs orders (made on first use)."""
        return self.key_dir / "orders.key"

    @property
    def ca_dir(self) -> Path:
        return self.state_dir / "ca"
