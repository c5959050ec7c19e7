"""The controller's domain wired together once: one engine, ledger, CA and order key shared
by the node store and the four concerns, for the API server and the CLI.

Modules, one job each:

* :mod:`.nodes` — :class:`~.nodes.NodeState` and :class:`~.nodes.NodeStore` (the one
  ``move``)
* :mod:`.trust` — the transition table and the attestation judge (pure functions)
* :mod:`.enrollment` — bootstrap tokens, enrollment, node certificates
* :mod:`.attestation` — expected profiles, challenges, reports, heartbeats and deadlines
* :mod:`.orders` — signed orders and their acknowledgments
* :mod:`.intake` — events stored once, and the incidents they raise (rules: :mod:`.incidents`)
* :mod:`.operators` — operator certificates on record (issue, revoke, check)
* :mod:`.access` — just-in-time access: users' tokens, the access policy, requests and
  grants (revoked when their node leaves trusted)
* :mod:`.segmentation` — label policies compiled into each trusted node's filter entries
  (recompiled on every trust-state change)
* :mod:`.recovery` — recovery jobs replacing quarantined nodes (store, guard rails, engine)
* :mod:`.errors` — the domain's refusals (``NotFound``, ``Forbidden``, ``Conflict``...)

Typical use::

    ctl = open_controller(Settings.resolve())
    ctl.enrollment.issue_token("web1")
    ctl.orders.create("web1", "attest", {}, actor="operator:alice")
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine

from aegis_protocol.files import private_key

from . import db
from .access.store import Access
from .attestation import Attestation
from .enrollment import Enrollment
from .intake import Intake
from .ledger import Ledger, load_signer
from .nodes import NodeStore
from .operators import Operators
from .orders import Orders
from .pki import CertificateAuthority
from .recovery.store import RecoveryStore
from .secrets.store import SecretsStore
from .segmentation.store import LabelPolicies
from .settings import Settings


@dataclass(frozen=True)
class Controller:
    engine: Engine
    ledger: Ledger
    ca: CertificateAuthority
    nodes: NodeStore
    enrollment: Enrollment
    attestation: Attestation
    orders: Orders
    intake: Intake
    operators: Operators
    secrets: SecretsStore
    recovery: RecoveryStore
    access: Access
    segment: LabelPolicies

    @classmethod
    def assemble(cls, engine: Engine, ledger: Ledger, ca: CertificateAuthority,
                 order_signer: Ed25519PrivateKey) -> Controller:
        nodes = NodeStore(engine, ledger)
        orders = Orders(nodes, ledger, order_signer)
        access = Access(engine, ledger, nodes, orders)
        nodes.leaving_trust.append(access.node_left_trust_in)
        segment = LabelPolicies(engine, ledger, nodes, orders, access.label_keys)
        nodes.changed.append(segment.node_changed_in)
        intake = Intake(nodes, ledger, orders)
        intake.listeners.append(access.agent_event)
        intake.batch_listeners.append(access.sessions.events)
        return cls(engine=engine, ledger=ledger, ca=ca, nodes=nodes,
                   enrollment=Enrollment(nodes, ledger, ca, orders.key),
                   attestation=Attestation(nodes, ledger, orders), orders=orders,
                   intake=intake,
                   operators=Operators(engine, ledger, ca),
                   secrets=SecretsStore(nodes, ledger),
                   recovery=RecoveryStore(engine, ledger, nodes), access=access,
                   segment=segment)


def open_controller(settings: Settings) -> Controller:
    """The controller ``settings`` name: database migrated, CA and order key made once."""
    engine = db.open_engine(settings.db_url)
    db.upgrade(engine)
    ca = CertificateAuthority(settings.ca_dir)
    ca.init()
    ledger = Ledger(engine, signer=load_signer(settings.private_key),
                    anchor_path=settings.anchor_path)
    return Controller.assemble(engine, ledger, ca,
                               private_key(settings.order_key, Ed25519PrivateKey))
