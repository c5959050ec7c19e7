"""A node's inventory before its last change, and when it changed: the console's Node page
shows what changed (packages, services, listening sockets).

Revision ID: 0013_inventory_previous
Revises: 0012_access_first_packet
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013_inventory_previous"
down_revision = "0012_access_first_packet"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("inventory_previous", sa.Text(), nullable=True))
        batch.add_column(sa.Column("inventory_changed_at", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.drop_column("inventory_changed_at")
        batch.drop_column("inventory_previous")
