"""Nodes keep their last attestation measurement, so an operator can see what a node
reported and pin its BPF programs into the expected profile.

Revision ID: 0003_node_measurement
Revises: 0002_controller_state
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_node_measurement"
down_revision = "0002_controller_state"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("measurement", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.drop_column("measurement")
