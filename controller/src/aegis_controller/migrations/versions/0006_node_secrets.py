"""Leased secrets: the node role whose AppRole a node's secrets come from
(``nodes.secrets_role``, set by an operator) and each set of secrets a node fetched
(``secret_grants``: the token's accessor, lease ids and database logins it reported,
never a secret) with the state of its revocation.

Revision ID: 0006_node_secrets
Revises: 0005_operators
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_node_secrets"
down_revision = "0005_operators"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("secrets_role", sa.String(63), nullable=True))
    op.create_table(
        "secret_grants",
        sa.Column("grant_id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("node_id", sa.String(63), nullable=False),
        sa.Column("order_id", sa.String(36), nullable=False),
        sa.Column("approle", sa.String(63), nullable=False),
        sa.Column("accessor", sa.String(128), nullable=False),
        sa.Column("leases", sa.Text(), nullable=False),  # JSON list of lease ids
        sa.Column("logins", sa.Text(), nullable=False),  # JSON list of database logins
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.Column("fetched_at", sa.BigInteger(), nullable=False),
        sa.Column("revoke_requested_at", sa.BigInteger(), nullable=True),
        sa.Column("revoke_reason", sa.Text(), nullable=True),
        sa.Column("revoked_at", sa.BigInteger(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("next_attempt_at", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("last_outcome", sa.Text(), nullable=True),
    )
    op.create_index("ix_secret_grants_node_id", "secret_grants", ["node_id"])


def downgrade() -> None:
    op.drop_index("ix_secret_grants_node_id", "secret_grants")
    op.drop_table("secret_grants")
    with op.batch_alter_table("nodes") as batch:
        batch.drop_column("secrets_role")
