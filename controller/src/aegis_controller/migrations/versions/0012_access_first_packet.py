"""When a granted edge carried its first packet, as the node's agent reported it
(``edge_used``): the grant's ``first_packet`` step on the ledger is written once; and its
last packet, from the agent's heartbeats (the console's Access page).

Revision ID: 0012_access_first_packet
Revises: 0011_access_ssh
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012_access_first_packet"
down_revision = "0011_access_ssh"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("access_edges") as batch:
        batch.add_column(sa.Column("first_packet_ns", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("last_packet_ns", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("access_edges") as batch:
        batch.drop_column("last_packet_ns")
        batch.drop_column("first_packet_ns")
