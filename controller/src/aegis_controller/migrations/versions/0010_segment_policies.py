"""Label policies (identity-based east-west edges): every version of the policy set
(``segment_policies``) and the compiled set each node was last sent as a signed
``segment-policy`` order (``segment_pushes``).

Revision ID: 0010_segment_policies
Revises: 0009_operator_rights
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_segment_policies"
down_revision = "0009_operator_rights"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "segment_policies",
        sa.Column("version", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("document", sa.Text(), nullable=False),  # the validated policies, JSON
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("set_at", sa.BigInteger(), nullable=False),
        sa.Column("set_by", sa.String(255), nullable=False),
    )
    op.create_table(
        "segment_pushes",
        sa.Column("node_id", sa.String(63), primary_key=True),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("document", sa.Text(), nullable=False),  # JSON: policies and entries
        sa.Column("order_id", sa.String(36), nullable=False),
        sa.Column("pushed_at", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("segment_pushes")
    op.drop_table("segment_policies")
