"""Aegis control plane and recovery engine.

Modules, one job each:

* :mod:`.settings` — where the state lives (``Settings.resolve``: options, env, defaults)
* :mod:`.db` — engine, the one table metadata, migrations, the writer transaction
* :mod:`.tables` — the controller's state tables (on ``db.metadata``)
* :mod:`.domain` — the domain wired once (``open_controller``); its concerns:
  :mod:`.nodes` (states and the node store), :mod:`.trust` (transition table, judge),
  :mod:`.enrollment`, :mod:`.attestation`, :mod:`.orders`, :mod:`.intake`
  (with the rules in :mod:`.incidents`), :mod:`.operators` (operator certificates on
  record), and :mod:`.errors` (the domain's refusals)
* :mod:`.ledger` — the audit ledger (its own package map)
* :mod:`.pki` — the CA for mutual TLS; :mod:`.vault_wrap` — response-wrapped tokens
* :mod:`.api` — HTTP only: the FastAPI app, mutual TLS identity, uvicorn
* :mod:`.cli` — ``aegis-controller``, one module per noun
* :mod:`.terraform` — Terraform driven through its JSON output
* :mod:`.backup` — age-encrypted backups of the state and their verified restore
"""

__version__ = "0.1.0"
