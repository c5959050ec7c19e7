"""Operators are kept in a table, like nodes: the serial of each operator's newest client
certificate and whether it was revoked, so that the API refuses a replaced or revoked
operator certificate.

Revision ID: 0005_operators
Revises: 0004_cert_renewals
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_operators"
down_revision = "0004_cert_renewals"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "operators",
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column("cert_serial", sa.String(64), nullable=False),
        sa.Column("issued_at", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.Column("revoked_at", sa.BigInteger(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("operators")
