"""Audit ledger: one append-only table of hash-chained, signed records.

Revision ID: 0001_ledger
Revises:
Create Date: 2025-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_ledger"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ledger_records",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("ts", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("subject", sa.String(255), nullable=False),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("sig", sa.String(128), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_ledger_records"),
    )
    op.create_index("ix_ledger_records_kind_seq", "ledger_records", ["kind", "seq"])
    op.create_index("ix_ledger_records_subject_seq", "ledger_records", ["subject", "seq"])


def downgrade() -> None:
    op.drop_index("ix_ledger_records_subject_seq", table_name="ledger_records")
    op.drop_index("ix_ledger_records_kind_seq", table_name="ledger_records")
    op.drop_table("ledger_records")
