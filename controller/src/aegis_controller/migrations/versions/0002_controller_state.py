"""Controller state: nodes (trust state, identity key, expected profile, last heartbeat and
inventory), one-time bootstrap tokens, single-use attestation nonces, signed orders and
their acks, events and the incidents rules made of them.

Revision ID: 0002_controller_state
Revises: 0001_ledger
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_controller_state"
down_revision = "0001_ledger"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "nodes",
        sa.Column("node_id", sa.String(63), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("enrolled_at", sa.BigInteger(), nullable=True),
        sa.Column("cert_serial", sa.String(64), nullable=True),
        sa.Column("last_seen", sa.BigInteger(), nullable=True),
        sa.Column("identity_key", sa.String(64), nullable=True),
        sa.Column("profile", sa.Text(), nullable=True),
        sa.Column("heartbeat_at", sa.BigInteger(), nullable=True),
        sa.Column("inventory", sa.Text(), nullable=True),
    )
    op.create_table(
        "attest_nonces",
        sa.Column("nonce", sa.String(64), primary_key=True),
        sa.Column("node_id", sa.String(63), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.Column("used_at", sa.BigInteger(), nullable=True),
    )
    op.create_table(
        "bootstrap_tokens",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("node_id", sa.String(63), nullable=False),
        sa.Column("issued_at", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.Column("used_at", sa.BigInteger(), nullable=True),
    )
    op.create_table(
        "orders",
        sa.Column("order_id", sa.String(36), primary_key=True),
        sa.Column("node_id", sa.String(63), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("signed", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.Column("acked_at", sa.BigInteger(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
    )
    op.create_index("ix_orders_node_status", "orders", ["node_id", "status"])
    op.create_table(
        "events",
        sa.Column("node_id", sa.String(63), nullable=False),
        sa.Column("event_id", sa.String(36), nullable=False),
        sa.Column("ts_ns", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("received_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("node_id", "event_id", name="pk_events"),
    )
    op.create_index("ix_events_kind", "events", ["kind"])
    op.create_table(
        "incidents",
        sa.Column("incident_id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("node_id", sa.String(63), nullable=False),
        sa.Column("rule", sa.String(64), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("event_id", sa.String(36), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("order_id", sa.String(36), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("incidents")
    op.drop_index("ix_events_kind", table_name="events")
    op.drop_table("events")
    op.drop_index("ix_orders_node_status", table_name="orders")
    op.drop_table("orders")
    op.drop_table("attest_nonces")
    op.drop_table("bootstrap_tokens")
    op.drop_table("nodes")
