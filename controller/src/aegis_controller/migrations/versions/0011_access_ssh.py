"""SSH user certificates of access grants: the public key a user sent with a request to an
``ssh`` service, and the certificate the SSH CA signed at the grant (its serial and key
id, what an early revoke puts on the nodes' KRL); per edge, the ``revoke-ssh-cert`` order
sent to that node.

Revision ID: 0011_access_ssh
Revises: 0010_segment_policies
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011_access_ssh"
down_revision = "0010_segment_policies"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("access_requests") as batch:
        batch.add_column(sa.Column("ssh_public_key", sa.Text(), nullable=True))
        batch.add_column(sa.Column("ssh_certificate", sa.Text(), nullable=True))
        batch.add_column(sa.Column("ssh_serial", sa.String(20), nullable=True))
        batch.add_column(sa.Column("ssh_key_id", sa.String(200), nullable=True))
        batch.add_column(sa.Column("ssh_principal", sa.String(64), nullable=True))
        batch.add_column(sa.Column("ssh_valid_after", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("ssh_valid_before", sa.BigInteger(), nullable=True))
    with op.batch_alter_table("access_edges") as batch:
        batch.add_column(sa.Column("krl_order", sa.String(36), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("access_edges") as batch:
        batch.drop_column("krl_order")
    with op.batch_alter_table("access_requests") as batch:
        for column in ("ssh_valid_before", "ssh_valid_after", "ssh_principal", "ssh_key_id",
                       "ssh_serial", "ssh_certificate", "ssh_public_key"):
            batch.drop_column(column)
